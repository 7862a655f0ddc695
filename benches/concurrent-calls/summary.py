#!/usr/bin/env python3
"""Summary of benches/concurrent-calls.sh: results.tsv -> a markdown table and the RESULT line.

Per call = (steady - idle) / calls, in kB (1024 bytes), from PSS (the fair sum over processes)
and from RSS; medians over the runs of each (system, calls).
"""
import csv
import statistics
import sys

NAMES = {'trunkline': 'trunkline', 'kamailio': 'Kamailio + rtpengine'}


def num(v):
    try:
        return float(v)
    except ValueError:
        return None


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=1):
    return '-' if x is None else f'{x:,.{digits}f}'


def main(path):
    rows = list(csv.DictReader(open(path), delimiter='\t'))
    groups = {}
    for r in rows:
        groups.setdefault((r['system'], int(r['calls'])), []).append(r)
    print('| system | calls | runs | idle PSS (MB) | with the calls (MB) | peak (MB) | '
          'per call, PSS (kB) | per call, RSS (kB) | after BYE + linger, above idle (MB) | '
          'Kamailio shm per call (kB) | RTP relayed |')
    print('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')
    per_call = {}
    for (sysname, n), rs in sorted(groups.items(), key=lambda kv: (-kv[0][1], kv[0][0] != 'trunkline')):
        pc_pss = [(num(r['steady_pss_kb']) - num(r['idle_pss_kb'])) / n for r in rs]
        pc_rss = [(num(r['steady_rss_kb']) - num(r['idle_rss_kb'])) / n for r in rs]
        left = [(num(r['after_pss_kb']) - num(r['idle_pss_kb'])) / 1024 for r in rs]
        shm = [((num(r['shm_steady']) or 0) - (num(r['shm_idle']) or 0)) / 1024 / n
               for r in rs if num(r['shm_steady']) is not None]
        per_call[(sysname, n)] = med(pc_pss)
        runs = ', '.join(fmt(x) for x in pc_pss)
        print(f"| {NAMES.get(sysname, sysname)} | {n:,} | {len(rs)} "
              f"| {fmt(med(num(r['idle_pss_kb']) / 1024 for r in rs))} "
              f"| {fmt(med(num(r['steady_pss_kb']) / 1024 for r in rs))} "
              f"| {fmt(med(num(r['peak_pss_kb']) / 1024 for r in rs))} "
              f"| **{fmt(med(pc_pss))}** ({runs}) | {fmt(med(pc_rss))} | {fmt(med(left))} "
              f"| {fmt(med(shm), 2) if shm else '-'} "
              f"| {', '.join(r['relayed'] for r in rs)} |")
    print()
    # the reference's two parts: Kamailio (main + workers) and rtpengine
    for (sysname, n), rs in sorted(groups.items(), key=lambda kv: -kv[0][1]):
        parts = []
        for r in rs:
            i, st = r.get('idle_pss_parts', '-'), r.get('steady_pss_parts', '-')
            if '+' in i and '+' in st:
                parts.append([(float(b) - float(a)) / n for a, b in zip(i.split('+'), st.split('+'))])
        if parts:
            kam, rtpe = med(p[0] for p in parts), med(p[1] for p in parts)
            print(f'{NAMES.get(sysname, sysname)}, {n:,} calls, per call (PSS): Kamailio '
                  f'{fmt(kam)} kB, rtpengine {fmt(rtpe)} kB')
    print()
    # the slope between the two sizes: what one more call costs, fixed costs of the first calls apart
    slopes = {}
    for sysname in sorted({s for s, _ in groups}, key=lambda s: s != 'trunkline'):
        ns = sorted(n for s, n in groups if s == sysname)
        if len(ns) >= 2:
            lo, hi = ns[0], ns[-1]
            m_lo = med(num(r['steady_pss_kb']) for r in groups[(sysname, lo)])
            m_hi = med(num(r['steady_pss_kb']) for r in groups[(sysname, hi)])
            slopes[sysname] = (m_hi - m_lo) / (hi - lo)
            print(f'{NAMES.get(sysname, sysname)}: {fmt(slopes[sysname])} kB per call between '
                  f'{lo:,} and {hi:,} calls (difference of the median steady PSS)')
    if 'trunkline' in slopes and slopes.get('kamailio'):
        print(f"ratio of the slopes trunkline/pair {slopes['trunkline'] / slopes['kamailio']:.2f}")
    print()
    out = []
    for n in sorted({n for _, n in per_call}, reverse=True):
        t, k = per_call.get(('trunkline', n)), per_call.get(('kamailio', n))
        ratio = f'{t / k:.2f}' if t is not None and k else '-'
        print(f'{n:,} calls: trunkline {fmt(t)} kB per call (PSS), Kamailio + rtpengine '
              f'{fmt(k)} kB; ratio trunkline/pair {ratio}')
        out.append(f'calls={n} trunkline_kb_per_call={fmt(t)} kamailio_rtpengine_kb_per_call={fmt(k)} ratio={ratio}')
    print()
    print('RESULT ' + ' '.join(out))


if __name__ == '__main__':
    main(sys.argv[1])
