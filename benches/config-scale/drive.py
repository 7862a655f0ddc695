#!/usr/bin/env python3
"""Driver of benches/config-scale.sh: starts a gateway on a large config, times it to ready, then
edits one trunk again and again while sipp places calls at a constant rate, and times each edit
until an INVITE to the number it added is routed.

usage: drive.py MODE --bin BIN [options]    (MODE: run | gateway; see --help)

  run      `BIN run --specs DIR`; an edit rewrites the file holding InboundTrunk bench/bench-in
           (a temporary file renamed over it, as editors do).
  gateway  `BIN gateway` against the fake API server (`--api URL`, `--kubeconfig FILE`, started
           by the script); an edit is a PUT of bench/bench-in.

Prints one `RESULT key=value ...` line. Everything on 127.0.0.1; every wait is bounded.
"""
import argparse
import csv
import glob
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

BENCH_NUMBER = "+19990000000"
HERE = os.path.dirname(os.path.abspath(__file__))


def free_port(kind=socket.SOCK_DGRAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_get(url, timeout=0.5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except Exception:
        return None, b""


class Probe:
    """One INVITE at a time from its own UDP socket; answers what it gets (ACK, BYE)."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.media = random.randrange(31000, 39000, 2)  # outside the relay range (--rtp-ports)

    def _send(self, text):
        self.sock.sendto(text.replace("\n", "\r\n").encode(), self.gateway)

    def call(self, number, wait=0.5):
        """Sends one INVITE to `number`; gives the first final status (or 180/183), or None."""
        tag = "%x" % random.getrandbits(48)
        call_id = "probe-%x@127.0.0.1" % random.getrandbits(64)
        branch = "z9hG4bK-%x" % random.getrandbits(64)
        host = "%s:%d" % self.gateway
        sdp = (
            "v=0\no=probe 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\n"
            "m=audio %d RTP/AVP 0 8\na=rtpmap:0 PCMU/8000\na=rtpmap:8 PCMA/8000\n" % self.media
        )
        head = (
            "INVITE sip:{n}@{h} SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:{p};branch={b}\n"
            "Max-Forwards: 70\nFrom: <sip:+4930123456@127.0.0.1:{p}>;tag={t}\n"
            "To: <sip:{n}@{h}>\nCall-ID: {c}\nCSeq: 1 INVITE\n"
            "Contact: <sip:probe@127.0.0.1:{p}>\nContent-Type: application/sdp\n"
        ).format(n=number, h=host, p=self.port, b=branch, t=tag, c=call_id)
        self._send(head + "Content-Length: %d\n\n" % len(sdp.replace("\n", "\r\n")) + sdp)
        deadline = time.monotonic() + wait
        routed = None
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                data, _ = self.sock.recvfrom(65536)
            except socket.timeout:
                break
            text = data.decode(errors="replace")
            if call_id not in text or not text.startswith("SIP/2.0 "):
                continue
            code = int(text.split(" ", 2)[1])
            if code < 180:
                continue
            if code < 200:
                routed = code
                continue
            to = re.search(r"^To: *(.*?)\r$", text, re.M | re.I)
            to = to.group(1) if to else "<sip:%s@%s>" % (number, host)
            if code >= 200:
                ack_branch = branch if code >= 300 else branch + "-ack"
                self._send(
                    "ACK sip:{n}@{h} SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:{p};branch={b}\n"
                    "Max-Forwards: 70\nFrom: <sip:+4930123456@127.0.0.1:{p}>;tag={t}\nTo: {to}\n"
                    "Call-ID: {c}\nCSeq: 1 ACK\nContent-Length: 0\n\n".format(
                        n=number, h=host, p=self.port, b=ack_branch, t=tag, to=to, c=call_id))
            if code < 300:
                self._send(
                    "BYE sip:{n}@{h} SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:{p};branch={b}-bye\n"
                    "Max-Forwards: 70\nFrom: <sip:+4930123456@127.0.0.1:{p}>;tag={t}\nTo: {to}\n"
                    "Call-ID: {c}\nCSeq: 2 BYE\nContent-Length: 0\n\n".format(
                        n=number, h=host, p=self.port, b=branch, t=tag, to=to, c=call_id))
            return routed or code
        return routed

    def until_routed(self, number, within, every=0.01):
        """Calls `number` every `every` s until one is routed (18x/2xx); the time it came, or None."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            code = self.call(number, wait=0.3)
            if code is not None and code < 300:
                return time.monotonic()
            time.sleep(every)
        return None


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class RunEditor:
    def __init__(self, specs):
        self.file = None
        for f in sorted(glob.glob(os.path.join(specs, "*.yaml"))):
            with open(f) as fh:
                if "name: bench-in," in fh.read():
                    self.file = f
        if self.file is None:
            sys.exit("no file holds bench-in: generate the specs with --bench-agent")

    def add_number(self, number):
        with open(self.file) as fh:
            text = fh.read()
        line = '    - {number: "%s", agent: bench}\n' % BENCH_NUMBER
        text = text.replace(line, line + '    - {number: "%s", agent: bench}\n' % number, 1)
        tmp = os.path.join(os.path.dirname(self.file), ".edit.tmp")
        with open(tmp, "w") as fh:
            fh.write(text)
        t = time.monotonic()
        os.rename(tmp, self.file)
        return t


class ApiEditor:
    PATH = "/apis/trunkline.dev/v1alpha1/namespaces/bench/inboundtrunks/bench-in"

    def __init__(self, api):
        self.api = api.rstrip("/")

    def add_number(self, number):
        _, body = http_get(self.api + self.PATH, timeout=5)
        obj = json.loads(body)
        obj["spec"]["numbers"].append({"number": number, "agent": "bench"})
        req = urllib.request.Request(
            self.api + self.PATH, data=json.dumps(obj).encode(), method="PUT",
            headers={"content-type": "application/json"})
        t = time.monotonic()
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read()
        return t


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["run", "gateway"])
    p.add_argument("--bin", required=True)
    p.add_argument("--specs", help="run: the spec folder")
    p.add_argument("--api", help="gateway: the fake API server's URL")
    p.add_argument("--kubeconfig", help="gateway: a kubeconfig for it")
    p.add_argument("--bundle", default="trunkline-credentials")
    p.add_argument("--agent-port", type=int, required=True, help="the port bench-in's agent is at")
    p.add_argument("--out", required=True)
    p.add_argument("--edits", type=int, default=5)
    p.add_argument("--rate", type=int, default=200, help="steady calls per second")
    p.add_argument("--startup-only", action="store_true")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)

    sip, internal, admin = free_port(), free_port(), free_port(socket.SOCK_STREAM)
    common = [
        "--listen", "udp://127.0.0.1:%d" % sip, "--internal-listen", "udp://127.0.0.1:%d" % internal,
        "--admin", "127.0.0.1:%d" % admin, "--public-address", "127.0.0.1",
        "--source-invite-rate", "0", "--global-request-rate", "0", "--drain-timeout", "1",
        "--rtp-ports", "40000-50000",
    ]
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info,trunkline::source::watch=debug,trunkline::source::kube=debug"))
    if a.mode == "run":
        state = os.path.join(a.out, "state")
        args = [a.bin, "run", "--specs", a.specs, "--state-dir", state, "--api", "127.0.0.1:%d" % free_port(socket.SOCK_STREAM),
                "--records-spool", os.path.join(a.out, "spool")] + common
        editor = RunEditor(a.specs)
    else:
        args = [a.bin, "gateway", "--credentials-secret", a.bundle] + common
        env.update(KUBECONFIG=a.kubeconfig, POD_NAME="bench-0", POD_NAMESPACE="trunkline")
        env.pop("KUBERNETES_SERVICE_HOST", None)
        editor = ApiEditor(a.api)

    # sipp needs a terminal unless in background mode, where it says its PID.
    started = subprocess.run(
        ["sipp", "-sf", os.path.join(os.path.dirname(HERE), "inbound-cps", "uas.xml"), "-i", "127.0.0.1",
         "-p", str(a.agent_port), "-nostdin", "-bg", "-trace_err"],
        cwd=a.out, capture_output=True, text=True, timeout=10)
    uas_pid = int(re.search(r"PID=\[(\d+)\]", started.stdout).group(1))
    log = open(os.path.join(a.out, "gateway.log"), "w")
    t0 = time.monotonic()
    gw = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    result = {}
    try:
        deadline = t0 + 120
        while http_get("http://127.0.0.1:%d/readyz" % admin, timeout=0.2)[0] != 200:
            if time.monotonic() > deadline or gw.poll() is not None:
                sys.exit("the gateway did not become ready (see %s)" % log.name)
            time.sleep(0.01)
        t_ready = time.monotonic()
        probe = Probe(("127.0.0.1", sip))
        t_call = probe.until_routed(BENCH_NUMBER, within=30)
        if t_call is None:
            sys.exit("ready, but a call to %s is not routed (see %s)" % (BENCH_NUMBER, log.name))
        result.update(ready_s="%.3f" % (t_ready - t0), first_call_s="%.3f" % (t_call - t0))
        time.sleep(1)
        result["rss_kib"] = rss_kib(gw.pid)
        if a.startup_only:
            return result

        # Steady calls through the swaps: sipp at a constant rate to the bench number.
        span = 3 + 3 * a.edits
        uac = subprocess.run(
            ["sipp", "127.0.0.1:%d" % sip, "-sf", os.path.join(HERE, "uac.xml"), "-s", BENCH_NUMBER,
             "-i", "127.0.0.1", "-p", str(free_port()), "-r", str(a.rate), "-m", str(a.rate * span),
             "-nostdin", "-trace_stat", "-fd", "1", "-trace_rtt", "-rtt_freq", "1", "-trace_err",
             "-timeout", str(span + 30), "-timeout_error", "-bg"],
            cwd=a.out, capture_output=True, text=True, timeout=10)
        uac_pid = int(re.search(r"PID=\[(\d+)\]", uac.stdout).group(1))
        uac_started = time.time()
        time.sleep(2)
        swaps = []
        for k in range(a.edits):
            number = "+1999000%04d" % (k + 1)
            t_edit = editor.add_number(number)
            wall_edit = time.time()
            t_routed = probe.until_routed(number, within=20)
            if t_routed is None:
                sys.exit("edit %d: %s not routed within 20 s (see %s)" % (k, number, log.name))
            swaps.append((t_routed - t_edit, wall_edit, wall_edit + (t_routed - t_edit)))
            time.sleep(2.5)
        deadline = time.monotonic() + span + 60
        while os.path.exists("/proc/%d" % uac_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        stats = parse_stats(a.out)
        rtts = parse_rtts(a.out, uac_started)
        in_swap = [ms for (t, ms) in rtts if any(s - 0.05 <= t <= e + 0.5 for (_, s, e) in swaps)]
        times = sorted(d for (d, _, _) in swaps)
        result.update(
            edit_to_routed_ms=",".join("%.0f" % (d * 1000) for (d, _, _) in swaps),
            edit_median_ms="%.0f" % (times[len(times) // 2] * 1000),
            edit_max_ms="%.0f" % (times[-1] * 1000),
            calls=stats.get("SuccessfulCall(C)", "?"), failed=stats.get("FailedCall(C)", "?"),
            rtt_max_ms=max((ms for _, ms in rtts), default=0),
            rtt_max_in_swap_ms=max(in_swap, default=0),
            rtt_p99_ms=sorted(ms for _, ms in rtts)[int(len(rtts) * 0.99)] if rtts else 0,
        )
        return result
    finally:
        gw.send_signal(signal.SIGTERM)
        try:
            gw.wait(timeout=10)
        except subprocess.TimeoutExpired:
            gw.kill()
        os.kill(uas_pid, signal.SIGTERM)
        print("RESULT " + " ".join("%s=%s" % kv for kv in result.items()), flush=True)


def parse_stats(out):
    files = sorted(glob.glob(os.path.join(out, "uac_*_.csv")))
    if not files:
        return {}
    with open(files[-1]) as f:
        rows = list(csv.reader(f, delimiter=";"))
    return dict(zip(rows[0], rows[-1])) if len(rows) > 1 else {}


def parse_rtts(out, started):
    """(wall time, ms) of every call's INVITE-to-200 time."""
    rtts = []
    for name in glob.glob(os.path.join(out, "uac_*_rtt.csv")):
        with open(name) as f:
            for row in csv.reader(f, delimiter=";"):
                try:
                    date_ms, ms = float(row[0]), float(row[1])
                except (ValueError, IndexError):
                    continue
                t = date_ms / 1000 if date_ms > 1e12 else started + date_ms / 1000
                rtts.append((t, ms))
    return rtts


if __name__ == "__main__":
    main()
