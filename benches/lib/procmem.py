#!/usr/bin/env python3
"""Resident memory of process trees, summed (used by benches/concurrent-calls.sh).

  procmem.py snap [--count K] [--interval S] PID...
      K samples S s apart (default 1); prints the median of each column on one line:
      rss_kb pss_kb procs fds, then with several PIDs the PSS of each tree (pss_kb_1 ...)
  procmem.py watch --out FILE [--interval S] PID...
      a sample every S s (default 1) appended to FILE as `epoch rss_kb pss_kb procs fds`,
      until killed or every tree is gone

A tree is PID and all its descendants (found through the ppid in /proc/*/stat), so a forking
server (Kamailio: main process + workers) counts whole. Per process: Rss and Pss of
/proc/PID/smaps_rollup, and its open file descriptors. PSS splits each shared page among the
processes that map it, so its sum over forked workers sharing memory (Kamailio's shm pool) counts
each page once; the RSS sum counts a shared page once per process that touched it. A process that
ends between listing and reading is skipped.
"""
import argparse
import os
import statistics
import sys
import time


def tree(roots):
    children = {}
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            with open(f'/proc/{d}/stat') as f:
                stat = f.read()
        except OSError:
            continue
        # the command may hold spaces and parentheses: fields follow the last ')'
        ppid = int(stat[stat.rindex(')') + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    seen, todo = set(), [r for r in roots]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo.extend(children.get(p, []))
    return sorted(seen)


def sample(roots):
    rss = pss = procs = fds = 0
    for pid in tree(roots):
        r, p, n, f = one(pid)
        rss, pss, procs, fds = rss + r, pss + p, procs + n, fds + f
    return rss, pss, procs, fds


def one(pid):
    """Rss, Pss, 1 and its descriptors for a process; zeros for one gone or a kernel thread."""
    vals = {}
    try:
        with open(f'/proc/{pid}/smaps_rollup') as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] in ('Rss:', 'Pss:'):
                    vals[parts[0]] = int(parts[1])
        n_fds = len(os.listdir(f'/proc/{pid}/fd'))
    except OSError:
        return 0, 0, 0, 0
    if 'Rss:' not in vals:
        return 0, 0, 0, 0  # a kernel thread or a zombie
    return vals['Rss:'], vals.get('Pss:', 0), 1, n_fds


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest='cmd', required=True)
    s = sub.add_parser('snap')
    s.add_argument('--count', type=int, default=1)
    s.add_argument('--interval', type=float, default=1.0)
    s.add_argument('pids', type=int, nargs='+')
    w = sub.add_parser('watch')
    w.add_argument('--out', required=True)
    w.add_argument('--interval', type=float, default=1.0)
    w.add_argument('pids', type=int, nargs='+')
    a = ap.parse_args()

    if a.cmd == 'snap':
        rows = []
        for i in range(a.count):
            if i:
                time.sleep(a.interval)
            row = sample(a.pids)
            if len(a.pids) > 1:
                row += tuple(sample([p])[1] for p in a.pids)
            rows.append(row)
        print(' '.join(str(int(statistics.median(col))) for col in zip(*rows)))
        return 0

    with open(a.out, 'a', buffering=1) as out:
        while True:
            t = time.time()
            rss, pss, procs, fds = sample(a.pids)
            if procs == 0:
                return 0
            out.write(f'{t:.1f} {rss} {pss} {procs} {fds}\n')
            time.sleep(max(0.0, a.interval - (time.time() - t)))


if __name__ == '__main__':
    sys.exit(main())
