#!/usr/bin/env python3
"""Helpers of the calls/s benchmarks, benches/inbound-cps.sh and benches/outbound-cps.sh
(through benches/lib/cps.sh; standard library only).

  cps_measure.py step --system S --rep N --rate R --dur D --calls C --fail-max PCT --noise-max PCT
                      --sut-pid PID --uas-pid PID --csv FILE --timeout SECS --steps FILE
                      [--ports NAME=PORT,...] [--sipp-log FILE] [--sut-log FILE] -- SIPP...
      Runs one load step: samples CPU (/proc), runs the sipp UAC command (killed after
      --timeout s), samples again, reads sipp's statistics CSV, appends one tab-separated
      row to --steps and prints it as key=value. Exit 0 when the step passed.

  cps_measure.py summary --steps FILE --dur S --coarse-dur S
      Per system and repetition: the highest passing rate (full-length steps only) and the
      CPU per call; medians over repetitions; the markdown table; the RESULT line (last).

CPU is counted from utime+stime in /proc/PID/stat (all threads of a process) summed over
the process tree (Kamailio forks workers); the UAC's from its rusage once it has exited.
"other" is the machine's busy time (from /proc/stat idle) minus everything this benchmark
runs (SUT, UAC, UAS, kernel threads such as ksoftirqd doing loopback delivery, this
helper): unrelated work on the shared machine, in % of one core. "drops": datagrams the
kernel dropped per listed socket (a full receive buffer), from /proc/net/udp; the sockets whose
name starts with "sut" are the system under test's. "sut_log": the SUT's WARN/ERROR lines
logged during the step, by message (the three most frequent).
"""
import argparse
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
FIELDS = [
    "system", "rep", "rate", "dur", "calls", "created", "ok", "failed", "fail_pct",
    "achieved", "setup_ms", "retrans", "sut_cpu_s", "cpu_ms_per_call", "cpu_sut",
    "cpu_uac", "cpu_uas", "cpu_kthreads", "busy", "other", "udp_rcvbuf_err", "drops",
    "sut_log", "sipp_rc", "verdict",
]


def stat_fields(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    return s[s.rindex(")") + 2:].split()  # state(0) ppid(1) ... utime(11) stime(12)


def children_map():
    m = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = stat_fields(d)
            if st:
                m.setdefault(int(st[1]), []).append(int(d))
    return m


def tree_ticks(root, cmap):
    """utime+stime of root and all its descendants, in clock ticks."""
    if not root:
        return 0
    total, stack, seen = 0, [int(root)], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        st = stat_fields(p)
        if st:
            total += int(st[11]) + int(st[12])
        stack.extend(cmap.get(p, []))
    return total


def machine():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[3] + v[4]  # idle + iowait


def udp_rcvbuf_errors():
    with open("/proc/net/snmp") as f:
        rows = [l.split() for l in f if l.startswith("Udp:")]
    hdr, val = rows[0], rows[1]
    return int(val[hdr.index("RcvbufErrors")])


def udp_drops():
    """{local port: drops} of the IPv4 UDP sockets (/proc/net/udp, last column)."""
    out = {}
    try:
        with open("/proc/net/udp") as f:
            next(f)
            for line in f:
                c = line.split()
                port = int(c[1].split(":")[1], 16)
                out[port] = out.get(port, 0) + int(c[-1])
    except (OSError, ValueError, IndexError):
        pass
    return out


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def log_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def log_events(path, start):
    """The SUT's warnings and errors logged since byte `start`: "message:count;..." (top 3)."""
    counts = {}
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "-"
    for line in text.splitlines():
        line = ANSI.sub("", line)
        m = re.search(r"\b(WARN|ERROR)\b\s+(.*)", line)
        if not m:
            continue
        # trunkline: "WARN message key=value ..."; kamailio: "ERROR: <module> [file:line]: text"
        msg = re.split(r"\s+\w+=", m.group(2))[0].strip(" :")
        msg = re.sub(r"[\s;:,]+", " ", msg)[:60]
        counts[msg] = counts.get(msg, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
    return ";".join(f"{k}:{v}" for k, v in top) or "-"


def snapshot(a):
    cmap = children_map()
    return {
        "t": time.monotonic(),
        "sut": tree_ticks(a.sut_pid, cmap),
        "uas": tree_ticks(a.uas_pid, cmap),
        "kthreads": tree_ticks(2, cmap),
        "self": tree_ticks(os.getpid(), {}),
        "idle": machine(),
        "rcvbuf": udp_rcvbuf_errors(),
    }


def read_sipp_csv(path, calls):
    """(created, ok, failed, retrans, achieved cps, setup ms) from sipp -trace_stat."""
    try:
        rows = [l.rstrip("\n").split(";") for l in open(path) if l.strip()]
    except OSError:
        return 0, 0, 0, 0, 0.0, 0.0
    if len(rows) < 2:
        return 0, 0, 0, 0, 0.0, 0.0
    ix = {h: i for i, h in enumerate(rows[0])}
    rows = rows[1:]

    def f(r, k):
        return r[ix[k]]

    def epoch(v):
        return float(v.split("\t")[-1])

    last = rows[-1]
    created = int(f(last, "OutgoingCall(C)"))
    ok = int(f(last, "SuccessfulCall(C)"))
    failed = int(f(last, "FailedCall(C)"))
    retrans = int(f(last, "Retransmissions(C)"))
    t0 = epoch(f(rows[0], "StartTime"))
    # the creation rate: calls created by the last 1 s statistics row before all were (sipp
    # writes a row each second, and one more at the end, which may come much later)
    achieved, n_prev, t_prev = 0.0, 0, t0
    for r in rows:
        n, t = int(f(r, "OutgoingCall(C)")), epoch(f(r, "CurrentTime"))
        if n >= calls:
            if t_prev - t0 < 0.9:  # all created within the first row: that row's time
                n_prev, t_prev = n, t
            break
        n_prev, t_prev = n, t
    if t_prev > t0:
        achieved = n_prev / (t_prev - t0)
    rt = f(last, "ResponseTime1(C)").split(":")
    setup_ms = (int(rt[0]) * 3600 + int(rt[1]) * 60 + int(rt[2])) * 1000 + int(rt[3]) / 1000.0
    return created, ok, failed, retrans, achieved, setup_ms


def cmd_step(a):
    ports = dict((k, int(v)) for k, v in (p.split("=") for p in a.ports.split(",") if p))
    drops0 = udp_drops()
    drops = {}  # per port: the highest count seen (a socket's counter goes with the socket)

    def poll_drops():
        now = udp_drops()
        for port in ports.values():
            if port in now:
                drops[port] = max(drops.get(port, 0), now[port] - drops0.get(port, 0))

    log0 = log_size(a.sut_log) if a.sut_log else 0
    before = snapshot(a)
    log = open(a.sipp_log, "ab") if a.sipp_log else subprocess.DEVNULL
    proc = subprocess.Popen(a.sipp, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True)

    def stop_sipp(*_):
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                pass

    signal.signal(signal.SIGTERM, lambda *_: (stop_sipp(), sys.exit(143)))
    deadline = time.monotonic() + a.timeout
    rc = None
    while rc is None:
        poll_drops()
        try:
            rc = proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                stop_sipp()
                rc = 124
    poll_drops()
    after = snapshot(a)
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = max(after["t"] - before["t"], 1e-3)

    def pct(ticks):  # % of one core over the step
        return 100.0 * ticks / HZ / wall

    sut = after["sut"] - before["sut"]
    uas = after["uas"] - before["uas"]
    kthr = after["kthreads"] - before["kthreads"]
    own = after["self"] - before["self"]
    uac_s = ru.ru_utime + ru.ru_stime
    busy_core_pct = 100.0 * NCPU - pct(after["idle"] - before["idle"])
    other = busy_core_pct - pct(sut) - pct(uas) - pct(kthr) - pct(own) - 100.0 * uac_s / wall

    created, ok, failed, retrans, achieved, setup_ms = read_sipp_csv(a.csv, a.calls)
    denom = max(created, a.calls)
    fail_pct = 100.0 * (denom - ok) / denom  # every call not completed counts as failed
    passed = fail_pct < a.fail_max and created >= a.calls and achieved >= 0.95 * a.rate
    verdict = "PASS" if passed else "FAIL"
    if other > a.noise_max:
        verdict += "+NOISY"
    row = {
        "system": a.system, "rep": a.rep, "rate": a.rate, "dur": a.dur, "calls": a.calls,
        "created": created, "ok": ok, "failed": denom - ok, "fail_pct": f"{fail_pct:.2f}",
        "achieved": f"{achieved:.0f}", "setup_ms": f"{setup_ms:.1f}", "retrans": retrans,
        "sut_cpu_s": f"{sut / HZ:.2f}",
        "cpu_ms_per_call": f"{1000.0 * sut / HZ / max(created, 1):.3f}",
        "cpu_sut": f"{pct(sut):.0f}", "cpu_uac": f"{100.0 * uac_s / wall:.0f}",
        "cpu_uas": f"{pct(uas):.0f}", "cpu_kthreads": f"{pct(kthr):.0f}",
        "busy": f"{busy_core_pct:.0f}", "other": f"{other:.0f}",
        "udp_rcvbuf_err": after["rcvbuf"] - before["rcvbuf"],
        "drops": ",".join(f"{k}:{drops.get(v, 0)}" for k, v in ports.items()) or "-",
        "sut_log": log_events(a.sut_log, log0) if a.sut_log else "-",
        "sipp_rc": rc, "verdict": verdict,
    }
    new = not os.path.exists(a.steps) or os.path.getsize(a.steps) == 0
    with open(a.steps, "a") as f:
        if new:
            f.write("\t".join(FIELDS) + "\n")
        f.write("\t".join(str(row[k]) for k in FIELDS) + "\n")
    print(" ".join(f"{k}={row[k]}" for k in FIELDS[1:]))
    return 0 if passed else 1


def load_steps(path):
    with open(path) as f:
        lines = [l.rstrip("\n").split("\t") for l in f if l.strip()]
    hdr = lines[0]
    return [dict(zip(hdr, l)) for l in lines[1:]]


def fmt(x, nd=0):
    return "n/a" if x is None else f"{x:,.{nd}f}"


def cmd_summary(a):
    steps = load_steps(a.steps)
    systems = ["trunkline", "kamailio"]
    reps = sorted({int(s["rep"]) for s in steps})
    full = {}
    for s in steps:
        if int(s["dur"]) == a.dur:
            full.setdefault((s["system"], int(s["rep"])), []).append(s)
    best = {}  # (system, rep) -> (cps, step row) at the highest passing full-length step
    for key, rows in full.items():
        ok = [r for r in rows if r["verdict"].startswith("PASS")]
        if ok:
            r = max(ok, key=lambda r: int(r["rate"]))
            best[key] = (int(r["rate"]), r)
    # CPU per call at the same load for both: the highest rate of the doubling phase that
    # both systems passed cleanly (retransmissions < 1% of the calls: little lost, little
    # extra work) in that repetition, else the highest both passed (the doubling rates are
    # the same for both)
    same = {}
    for rep in reps:
        passed = {}
        for sysname in systems:
            passed[sysname] = {int(s["rate"]): s for s in steps
                               if s["system"] == sysname and int(s["rep"]) == rep
                               and int(s["dur"]) == a.coarse_dur and s["verdict"].startswith("PASS")}
        common = set(passed["trunkline"]) & set(passed["kamailio"])
        clean = {r for r in common
                 if all(int(passed[n][r]["retrans"]) < 0.01 * int(passed[n][r]["calls"]) for n in systems)}
        if clean or common:
            r = max(clean or common)
            same[rep] = (r, {n: float(passed[n][r]["cpu_ms_per_call"]) for n in systems})

    def med(vals):
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else None

    out = []
    out.append("| system | run | highest rate < 1% failed (calls/s) | failed | setup (ms) "
               "| retransmissions | drops SUT / UAC | SUT CPU (% of a core) | SUT CPU per call (ms) |")
    out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for sysname in systems:
        for rep in reps:
            b = best.get((sysname, rep))
            if b:
                r = b[1]
                d = dict(x.split(":") for x in r["drops"].split(",") if ":" in x)
                sut_drops = sum(int(v) for k, v in d.items() if k.startswith("sut"))
                out.append(f"| {sysname} | {rep} | {b[0]:,} | {r['fail_pct']}% | {r['setup_ms']} | "
                           f"{int(r['retrans']):,} | {sut_drops:,} / {int(d.get('uac', 0)):,} | "
                           f"{r['cpu_sut']} | {r['cpu_ms_per_call']} |")
            else:
                out.append(f"| {sysname} | {rep} | 0 (no passing step) | | | | | | |")
    cps = {n: med([best[(n, r)][0] if (n, r) in best else 0 for r in reps]) for n in systems}
    cpu_best = {n: med([float(best[(n, r)][1]["cpu_ms_per_call"]) for r in reps if (n, r) in best])
                for n in systems}
    cpu_same = {n: med([same[r][1][n] for r in reps if r in same]) for n in systems}
    same_rates = sorted({same[r][0] for r in reps if r in same})
    for n in systems:
        out.append(f"| **{n}** | median | **{fmt(cps[n])}** | | | | | | {fmt(cpu_best[n], 3)} |")
    print("\n".join(out))
    print()
    for rep in reps:
        if rep in same:
            r, v = same[rep]
            print(f"same load, run {rep}: {r} calls/s: trunkline {v['trunkline']:.3f} ms/call, "
                  f"kamailio {v['kamailio']:.3f} ms/call")

    # CPU per call along the doubling phase (the same rates for both), medians over the runs
    rates = sorted({int(s["rate"]) for s in steps if int(s["dur"]) == a.coarse_dur})
    cells = {}
    for n in systems:
        for r in rates:
            v = [float(s["cpu_ms_per_call"]) for s in steps if s["system"] == n
                 and int(s["rate"]) == r and int(s["dur"]) == a.coarse_dur
                 and s["verdict"].startswith("PASS")]
            cells[(n, r)] = statistics.median(v) if v else None
    shown = [r for r in rates if any(cells[(n, r)] is not None for n in systems)]
    if shown:
        print()
        print("SUT CPU per call (ms) in the doubling phase, passed steps, median over runs:")
        print()
        print("| calls/s | " + " | ".join(f"{r:,}" for r in shown) + " |")
        print("| --- |" + " --- |" * len(shown))
        for n in systems:
            print(f"| {n} | " + " | ".join(fmt(cells[(n, r)], 3) for r in shown) + " |")

    def ratio(x, y, nd=2):
        return f"{x / y:.{nd}f}" if x and y else "n/a"

    same_rate = "/".join(str(r) for r in same_rates) or "n/a"
    print(f"RESULT trunkline_cps={fmt(cps['trunkline']).replace(',', '')} "
          f"kamailio_cps={fmt(cps['kamailio']).replace(',', '')} "
          f"ratio={ratio(cps['trunkline'], cps['kamailio'])} "
          f"trunkline_cpu_ms_per_call={fmt(cpu_same['trunkline'], 3)} "
          f"kamailio_cpu_ms_per_call={fmt(cpu_same['kamailio'], 3)} "
          f"cpu_ratio={ratio(cpu_same['trunkline'], cpu_same['kamailio'])} cpu_at_cps={same_rate} "
          f"cpu_ms_per_call_at_max=trunkline:{fmt(cpu_best['trunkline'], 3)},"
          f"kamailio:{fmt(cpu_best['kamailio'], 3)} runs={len(reps)}")
    return 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("step")
    s.add_argument("--system", required=True)
    s.add_argument("--rep", type=int, required=True)
    s.add_argument("--rate", type=int, required=True)
    s.add_argument("--dur", type=int, required=True)
    s.add_argument("--calls", type=int, required=True)
    s.add_argument("--fail-max", type=float, default=1.0)
    s.add_argument("--noise-max", type=float, default=25.0)
    s.add_argument("--sut-pid", type=int, required=True)
    s.add_argument("--uas-pid", type=int, required=True)
    s.add_argument("--csv", required=True)
    s.add_argument("--timeout", type=float, required=True)
    s.add_argument("--steps", required=True)
    s.add_argument("--sipp-log", default="", help="sipp's stdout and stderr go here")
    s.add_argument("--sut-log", default="", help="the SUT's log: its warnings are counted")
    s.add_argument("--ports", default="", help="NAME=PORT,...: UDP sockets whose drops to report")
    s.add_argument("sipp", nargs=argparse.REMAINDER)
    m = sub.add_parser("summary")
    m.add_argument("--steps", required=True)
    m.add_argument("--dur", type=int, required=True)
    m.add_argument("--coarse-dur", type=int, required=True)
    a = ap.parse_args()
    if a.cmd == "step":
        if a.sipp and a.sipp[0] == "--":
            a.sipp = a.sipp[1:]
        return cmd_step(a)
    return cmd_summary(a)


if __name__ == "__main__":
    sys.exit(main())
