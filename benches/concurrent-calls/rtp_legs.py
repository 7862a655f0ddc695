#!/usr/bin/env python3
"""RTP on every leg of the held calls of benches/concurrent-calls.sh, at a low rate.

Every call's SDP names the same media addresses: 127.0.0.1:A for the carrier (sipp UAC, -set
aport) and 127.0.0.1:B for the agent (sipp UAS, -set bport). This binds A and B and, as calls
are answered, reads the relay ports the system under test gave them from the sipp logs
("A <port>": the port in the 200 to the carrier; "B <port>": the port in the INVITE to the
agent). It sends --pps packets per second to each such port (from A to the A ports, from B to
the B ports), evenly spread, and counts what the relays forward back to A and B. Packets: RTP
version 2, PCMU (PT 0), 160 bytes of silence, one SSRC and sequence per leg (172 bytes).

A line of counters a second goes to --stats (`epoch legs_a legs_b sent_a sent_b recv_a recv_b`:
sent_a went from A toward the carrier-side ports and arrives, relayed, as recv_b; sent_b
arrives as recv_a); the last line is written on SIGTERM/SIGINT. Loopback only.
"""
import argparse
import os
import signal
import socket
import struct
import sys
import time


class LogTail:
    """New complete lines of a file that may not exist yet."""

    def __init__(self, path, prefix, from_end):
        self.path, self.prefix, self.pos, self.rest = path, prefix, 0, b''
        if from_end:
            try:
                self.pos = os.path.getsize(path)
            except OSError:
                pass

    def ports(self):
        try:
            with open(self.path, 'rb') as f:
                f.seek(self.pos)
                data = f.read()
        except OSError:
            return []
        self.pos += len(data)
        data = self.rest + data
        lines = data.split(b'\n')
        self.rest = lines.pop()
        out = []
        for line in lines:
            parts = line.split()
            if len(parts) == 2 and parts[0] == self.prefix and parts[1].isdigit():
                out.append(int(parts[1]))
        return out


def bind(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.bind(('127.0.0.1', port))
    s.setblocking(False)
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--a-port', type=int, required=True)
    ap.add_argument('--b-port', type=int, required=True)
    ap.add_argument('--a-log', required=True, help='the UAC log ("A <port>" lines)')
    ap.add_argument('--b-log', required=True, help='the UAS log ("B <port>" lines)')
    ap.add_argument('--b-log-from-end', action='store_true',
                    help='ignore the lines the UAS log holds at start (a warm-up call)')
    ap.add_argument('--pps', type=float, default=2.0, help='packets per second per leg')
    ap.add_argument('--stats', required=True)
    a = ap.parse_args()

    socks = [bind(a.a_port), bind(a.b_port)]
    tails = [LogTail(a.a_log, b'A', False), LogTail(a.b_log, b'B', a.b_log_from_end)]
    legs = []          # [socket index, port, seq, ssrc]
    known = [set(), set()]
    sent, recv = [0, 0], [0, 0]
    payload = b'\xff' * 160
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    stats = open(a.stats, 'a', buffering=1)

    def write_stats():
        stats.write(f'{time.time():.1f} {len(known[0])} {len(known[1])} '
                    f'{sent[0]} {sent[1]} {recv[0]} {recv[1]}\n')

    tick = 0.01
    cursor, credit = 0, 0.0
    next_read = next_stats = time.monotonic()
    t_prev = time.monotonic()
    while not stop:
        now = time.monotonic()
        if now >= next_read:
            next_read = now + 0.2
            for i in (0, 1):
                for port in tails[i].ports():
                    if port not in known[i]:
                        known[i].add(port)
                        legs.append([i, port, 0, (len(legs) * 2654435761 + 1) & 0xffffffff])
        # send: pps per leg, spread evenly (round robin, a share per tick)
        credit += len(legs) * a.pps * (now - t_prev)
        t_prev = now
        n = int(credit)
        credit -= n
        for _ in range(min(n, len(legs))):
            leg = legs[cursor % len(legs)]
            cursor += 1
            i, port, seq, ssrc = leg
            leg[2] = (seq + 1) & 0xffff
            hdr = struct.pack('!BBHII', 0x80, 0, seq, (seq * 160) & 0xffffffff, ssrc)
            try:
                socks[i].sendto(hdr + payload, ('127.0.0.1', port))
                sent[i] += 1
            except OSError:
                pass
        # receive what the relays forwarded
        for i in (0, 1):
            while True:
                try:
                    socks[i].recv(2048)
                    recv[i] += 1
                except OSError:
                    break
        if now >= next_stats:
            next_stats = now + 1.0
            write_stats()
        time.sleep(max(0.0, tick - (time.monotonic() - now)))
    write_stats()
    return 0


if __name__ == '__main__':
    sys.exit(main())
