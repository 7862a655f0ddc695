#!/usr/bin/env python3
"""The flooder of benches/flood.sh: RATE datagrams/s for SECONDS from one source address, half
garbage (random bytes, and SIP cut off in its headers), half unauthenticated INVITEs with a new
Call-ID and branch each. Sent in batches every millisecond; answers are read and thrown away so
that the socket never blocks. Prints `sent=N seconds=S rate=R` at the end."""
import argparse
import os
import socket
import time

p = argparse.ArgumentParser()
p.add_argument("--target", required=True)
p.add_argument("--source", default="127.0.0.66")
p.add_argument("--rate", type=int, required=True)
p.add_argument("--seconds", type=float, required=True)
a = p.parse_args()
host, port = a.target.rsplit(":", 1)
target = (host, int(port))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((a.source, 0))
s.setblocking(False)
me = "%s:%d" % s.getsockname()


def invite(n):
    return (
        f"INVITE sip:15551230001@{a.target} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {me};branch=z9hG4bKflood{n}\r\nMax-Forwards: 70\r\n"
        f"From: <sip:+100@{me}>;tag=f{n}\r\nTo: <sip:15551230001@{a.target}>\r\n"
        f"Call-ID: flood-{n}@{me}\r\nCSeq: 1 INVITE\r\nContact: <sip:x@{me}>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


garbage = [os.urandom(200), b"INVITE sip:x SIP/2.0\r\nVia: broken\r\n\r\n", b"\x00" * 64]
sent = 0
start = time.monotonic()
end = start + a.seconds
buf = bytearray(65536)
while True:
    now = time.monotonic()
    if now >= end:
        break
    due = int((now - start) * a.rate) - sent
    for _ in range(max(0, min(due, 5000))):
        datagram = invite(sent) if sent % 2 == 0 else garbage[sent % 3]
        try:
            s.sendto(datagram, target)
        except BlockingIOError:
            pass
        sent += 1
    try:
        while True:
            s.recv_into(buf)
    except (BlockingIOError, ConnectionRefusedError):
        pass
    time.sleep(0.001)
elapsed = time.monotonic() - start
print(f"sent={sent} seconds={elapsed:.1f} rate={int(sent / elapsed)}")
