#!/usr/bin/env python3
"""Drive build/rtpblast against a relay that is already set up; find the max
packets/s relayed with loss < --loss-max %, and measure latency at a fixed load.

Flows come from --flows FILE ("A port"/"B port" lines, see rtpblast.c) or from
--port-base P --nflows N ("A P+i").  A rate R uses K = min(nflows, ceil(R/pps))
flows at R/K packets/s each (so 50 pps/flow until the flows run out).

Search: double from --start until a step fails, then bisect to --resolution.
A step passes when (lost + later than --late-ms) < --loss-max % and the generator really sent >= 99 % of
the target rate (otherwise it is marked GENLIMIT and fails: the generator,
not the relay, was the limit).  Steps where unrelated processes used more
than --noise-max core-% are marked NOISY and repeated (--noise-retries).

Prints step lines and finally
  RESULT pps=NNNN loss=0.01% cpu_sut=..% ... lat_p50_us=.. lat_p99_us=.. added_p50_us=..
"""
import argparse, json, math, os, signal, subprocess, sys, time

CHILDREN = set()


def _on_term(signum, frame):
    for c in list(CHILDREN):
        try:
            c.terminate()
        except OSError:
            pass
    sys.exit(128 + signum)

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
CPUMON = os.path.join(HERE, "cpumon.py")


def machine_busy(sec=1.0):
    def rd():
        v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return v[3] + v[4]
    a, t = rd(), time.monotonic()
    time.sleep(sec)
    b, dt = rd(), time.monotonic() - t
    return max(0.0, 100.0 * (1 - (b - a) / 100.0 / (os.cpu_count() * dt)))


def wait_quiet(limit, maxwait):
    t0 = time.monotonic()
    while True:
        b = machine_busy(1.0)
        if b < limit or time.monotonic() - t0 > maxwait:
            return b


def udp_errs():
    lines = [l.split() for l in open("/proc/net/snmp") if l.startswith("Udp:")]
    h, v = lines[0], lines[1]
    d = dict(zip(h[1:], map(int, v[1:])))
    return d.get("InErrors", 0), d.get("RcvbufErrors", 0)


def parse_kv(line):
    out = {}
    for tok in line.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            out[k] = v
    return out


class Runner:
    def __init__(self, a):
        self.a = a
        self.nflows = a.nflows
        if a.flows:
            with open(a.flows) as f:
                self.nflows = sum(1 for l in f if l.strip())
        self.log = open(os.path.join(a.outdir, "steps.txt"), "a")

    def say(self, s):
        print(s, file=sys.stderr, flush=True)
        self.log.write(s + "\n")
        self.log.flush()

    def blast(self, rate, dur, flows=None, direct=False, tag="step"):
        a = self.a
        k = flows or min(self.nflows, max(1, math.ceil(rate / a.pps)))
        per = rate / k
        cmd = [a.blast, "-a", str(a.a_port), "-b", str(a.b_port), "-n", str(k),
               "-r", "%.4f" % per, "-d", str(dur), "-s", str(a.size), "-t", str(a.tick_us),
               "-w", str(a.drain_ms), "-L", str(a.late_ms)]
        if direct:
            cmd += ["-S", str(a.b_port)]
        elif a.flows:
            cmd += ["-f", a.flows]
        else:
            cmd += ["-P", str(a.port_base)]
        if a.nice:
            cmd = ["nice", "-n", str(a.nice)] + cmd
        pre = wait_quiet(a.quiet_limit, a.quiet_wait)
        e0 = udp_errs()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        CHILDREN.add(p)
        cpuf = os.path.join(a.outdir, "cpu-%s-%d-%d.json" % (tag, rate, int(time.time())))
        groups = ["--group", "gen=tree:%d" % p.pid]
        if a.sut_pid and not direct:
            groups += ["--group", "sut=tree:%d" % a.sut_pid]
        mon = subprocess.Popen([sys.executable, CPUMON, "--out", cpuf, "--interval", "1",
                                "--until-pid", str(p.pid), "--max-seconds", str(dur + 30)] + groups)
        CHILDREN.add(mon)
        try:
            out, err = p.communicate(timeout=dur + 60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        mon.wait(timeout=60)
        CHILDREN.discard(p)
        CHILDREN.discard(mon)
        e1 = udp_errs()
        r = parse_kv(out.strip().splitlines()[-1] if out.strip() else "")
        if not r:
            self.say("rtpblast failed: %s" % err.strip())
            sys.exit(1)
        cpu = json.load(open(cpuf))
        r["target"] = rate
        r["flows_used"] = k
        r["cpu"] = cpu
        r["pre_busy"] = round(pre, 1)
        r["udp_inerr"] = e1[0] - e0[0]
        r["udp_rcvbuferr"] = e1[1] - e0[1]
        return r

    def step(self, rate, dur, tag="step", direct=False, flows=None):
        a = self.a
        for attempt in range(a.noise_retries + 1):
            r = self.blast(rate, dur, flows=flows, direct=direct, tag=tag)
            tx = float(r["tx_pps"])
            sent = max(int(r["sent"]), 1)
            # packets later than --late-ms are as good as lost for a jitter buffer;
            # they also expose a relay that queues (sockets buffer ~300 packets
            # each, so with thousands of flows an overloaded relay can hide its
            # backlog for seconds before it drops anything)
            loss = 100.0 * (int(r["lost"]) + int(r["late"])) / sent
            r["eff_loss_pct"] = loss
            genlimit = tx < 0.99 * rate
            ok = loss < a.loss_max and not genlimit
            g = r["cpu"]["groups"]
            noisy = r["cpu"]["other_core_pct"] > a.noise_max
            line = ("%s rate=%d flows=%s tx_pps=%s recv=%s lost=%s late=%s loss=%.4f%% lat_p50_us=%s lat_p99_us=%s "
                    "lat_p999_us=%s cpu_sut=%s%% cpu_gen=%s%% sys_busy=%s%% irq=%s%% kthr=%s%% other=%s%% pre_busy=%s%% "
                    "udp_inerr=%d %s%s%s") % (
                tag, rate, r["flows"], r["tx_pps"], r["recv"], r["lost"], r["late"], loss, r["lat_us_p50"],
                r["lat_us_p99"], r["lat_us_p999"], g.get("sut", "-"), g.get("gen"),
                r["cpu"]["system_busy_pct"], r["cpu"]["irq_core_pct"], g.get("kthreads"),
                r["cpu"]["other_core_pct"],
                r["pre_busy"], r["udp_inerr"], "PASS" if ok else "FAIL",
                " GENLIMIT" if genlimit else "", " NOISY" if noisy else "")
            r["ok"] = ok
            r["line"] = line
            if noisy and attempt < a.noise_retries:
                self.say(line + " (repeating)")
                continue
            self.say(line)
            return r
        return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--blast", default=os.path.join(BENCH, "build", "rtpblast"))
    ap.add_argument("--a-port", type=int, required=True)
    ap.add_argument("--b-port", type=int, required=True)
    ap.add_argument("--flows")
    ap.add_argument("--port-base", type=int)
    ap.add_argument("--nflows", type=int, default=0)
    ap.add_argument("--sut-pid", type=int)
    ap.add_argument("--pps", type=float, default=50.0, help="packets/s per flow")
    ap.add_argument("--size", type=int, default=172)
    ap.add_argument("--tick-us", type=int, default=200)
    ap.add_argument("--drain-ms", type=int, default=1000)
    ap.add_argument("--rate", type=int, help="single step at this pps instead of a search")
    ap.add_argument("--start", type=int, default=25000)
    ap.add_argument("--max", type=int, default=2000000)
    ap.add_argument("--dur", type=float, default=10)
    ap.add_argument("--loss-max", type=float, default=0.1,
                    help="max %% of packets lost or later than --late-ms")
    ap.add_argument("--late-ms", type=int, default=50)
    ap.add_argument("--resolution", type=float, default=0.05)
    ap.add_argument("--lat-pps", type=int, default=25000)
    ap.add_argument("--lat-flows", type=int, default=500)
    ap.add_argument("--lat-dur", type=float, default=20)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--quiet-limit", type=float, default=20)
    ap.add_argument("--quiet-wait", type=float, default=60)
    ap.add_argument("--noise-max", type=float, default=25)
    ap.add_argument("--noise-retries", type=int, default=2)
    ap.add_argument("--nice", type=int, default=0)
    ap.add_argument("--label", default="relay")
    ap.add_argument("--outdir", required=True)
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    if not a.flows and not (a.port_base and a.nflows):
        sys.exit("need --flows or --port-base with --nflows")
    os.makedirs(a.outdir, exist_ok=True)
    R = Runner(a)
    R.say("# %s flows=%d loss_max=%s%% (lost or later than %d ms) dur=%ss pps/flow=%s size=%d" % (
        a.label, R.nflows, a.loss_max, a.late_ms, a.dur, a.pps, a.size))

    best = None
    if a.rate:
        r = R.step(a.rate, a.dur)
        best = r if r["ok"] else None
    else:
        lo, hi, rate = None, None, a.start
        while True:
            r = R.step(rate, a.dur)
            if r["ok"]:
                lo, best = rate, r
                if rate >= a.max:
                    break
                rate = min(rate * 2, a.max)
            else:
                hi = rate
                break
        if lo is None:  # even the start rate failed: go down
            rate = a.start
            while rate > 1000:
                rate //= 2
                r = R.step(rate, a.dur)
                if r["ok"]:
                    lo, best = rate, r
                    break
                hi = rate
        while lo is not None and hi is not None and (hi - lo) > max(500, a.resolution * lo):
            mid = (lo + hi) // 2 // 100 * 100
            if mid <= lo:
                break
            r = R.step(mid, a.dur)
            if r["ok"]:
                lo, best = mid, r
            else:
                hi = mid

    lat = direct = None
    if not a.no_latency:
        flows = min(a.lat_flows, R.nflows)
        lat = R.step(a.lat_pps, a.lat_dur, tag="latency", flows=flows)
        direct = R.step(a.lat_pps, a.lat_dur, tag="direct", flows=flows, direct=True)

    parts = []
    if best:
        g = best["cpu"]["groups"]
        parts.append("RESULT pps=%d loss=%.4f%% cpu_sut=%s%% cpu_gen=%s%% sys_busy=%s%%" % (
            best["target"], best["eff_loss_pct"], g.get("sut", "-"), g.get("gen"),
            best["cpu"]["system_busy_pct"]))
    else:
        parts.append("RESULT pps=0 loss=n/a (no passing step)")
    if lat:
        g = lat["cpu"]["groups"]
        parts.append("lat_pps=%d lat_p50_us=%s lat_p99_us=%s lat_p999_us=%s lat_loss=%.4f%% lat_cpu_sut=%s%% "
                     "lat_cpu_gen=%s%%" % (
                         a.lat_pps, lat["lat_us_p50"], lat["lat_us_p99"], lat["lat_us_p999"],
                         lat["eff_loss_pct"], g.get("sut", "-"), g.get("gen")))
        parts.append("direct_p50_us=%s direct_p99_us=%s" % (direct["lat_us_p50"], direct["lat_us_p99"]))
        parts.append("added_p50_us=%d added_p99_us=%d" % (
            int(lat["lat_us_p50"]) - int(direct["lat_us_p50"]),
            int(lat["lat_us_p99"]) - int(direct["lat_us_p99"])))
    res = " ".join(parts)
    R.log.write(res + "\n")
    print(res, flush=True)
    with open(os.path.join(a.outdir, "result.json"), "w") as f:
        json.dump({"best": best, "latency": lat, "direct": direct}, f, default=str, indent=1)


if __name__ == "__main__":
    main()
