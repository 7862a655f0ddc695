#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/seeds/<target>/seed-*) from the repository's own
test messages: the SIP messages of tests/sipp/*.xml (sipp's [keywords] filled in, CRLF line
ends, Content-Length computed), their SDP bodies, the digest header values and X- headers they
and the unit tests use, and the YAML of examples/ and tests/golden/. Run from the repository
root: python3 fuzz/make_seeds.py. Deterministic: the same tree gives the same files."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "fuzz" / "seeds"

KEYWORDS = {
    "service": "+14155550100", "remote_ip": "127.0.0.1", "remote_port": "5060",
    "local_ip": "127.0.0.2", "local_port": "5062", "transport": "UDP", "call_number": "1",
    "media_ip": "127.0.0.2", "media_port": "6000", "media_ip_type": "4", "pid": "4242",
    "cseq": "1", "call_id": "1-4242@127.0.0.2", "branch": "z9hG4bK-4242-1-0",
    "local_ip_type": "4", "server_ip": "127.0.0.1", "auto_media_port": "6000",
    "remote_ip_type": "4", "field0": "agent-7", "field1": "+14155550101",
}


LAST = {
    "via": "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-gw-1;rport",
    "from": "From: <sip:+14155550199@127.0.0.1>;tag=gw-1",
    "to": "To: <sip:+14155550100@127.0.0.2>",
    "call-id": "Call-ID: gw-1@127.0.0.1",
    "cseq": "CSeq: 1 INVITE",
    "record-route": "Record-Route: <sip:127.0.0.1;lr>",
    "contact": "Contact: <sip:gw@127.0.0.1:5060>",
}


def fill(text: str) -> str:
    text = re.sub(r"\[last_([A-Za-z-]+):?\]",
                  lambda m: LAST.get(m.group(1).lower(), f"{m.group(1)}: x"), text)
    text = re.sub(r"\[authentication[^\]]*\]",
                  'Authorization: Digest username="acme", realm="trunkline", '
                  'nonce="AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", '
                  'uri="sip:+14155550100@127.0.0.1", response="00000000000000000000000000000000", '
                  'algorithm=MD5, qop=auth, nc=00000001, cnonce="abc"', text)
    text = re.sub(r"\[peer_tag_param\]", ";tag=peer-1", text)
    text = re.sub(r"\[([a-z_0-9]+)(?:[:-][^\]]*)?\]",
                  lambda m: KEYWORDS.get(m.group(1), m.group(1)), text)
    return text


def sip_message(block: str) -> bytes | None:
    lines = [l.strip() for l in block.strip("\n").splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    if not lines:
        return None
    try:
        blank = lines.index("")
    except ValueError:
        blank = len(lines)
    head = [l for l in lines[:blank] if not l.lower().startswith(("content-length", "l:"))]
    body = "".join(l + "\r\n" for l in lines[blank + 1:] if l) if blank < len(lines) else ""
    head.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(fill(l) for l in head) + "\r\n\r\n" + fill(body)).encode()


def write(target: str, data: bytes) -> None:
    directory = SEEDS / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"seed-{hashlib.sha1(data).hexdigest()[:16]}").write_bytes(data)


def main() -> None:
    headers: set[str] = set()
    for xml in sorted((ROOT / "tests" / "sipp").glob("*.xml")):
        for block in re.findall(r"<!\[CDATA\[(.*?)\]\]>", xml.read_text(), re.S):
            message = sip_message(block)
            if message is None or b"SIP/2.0" not in message.split(b"\r\n", 1)[0]:
                continue
            write("sip_message", message)
            head, _, body = message.partition(b"\r\n\r\n")
            if body.startswith(b"v=0"):
                for choice in (0, 5, 0x86):
                    write("sdp_codec", bytes([choice]) + body)
            for line in head.decode().split("\r\n"):
                if line.lower().startswith("x-"):
                    headers.add(line)
                if line.lower().startswith(("authorization:", "proxy-authorization:",
                                            "www-authenticate:", "proxy-authenticate:")):
                    write("digest", b"\x02" + line.split(":", 1)[1].strip().encode())
    # The unit tests' digest values (string literals holding `Digest `) and X- headers.
    for source in ["src/sip/digest.rs", "src/sip/digest_client.rs"]:
        for literal in re.findall(r'"(Digest [^"\\]*(?:\\.[^"\\]*)*)"', (ROOT / source).read_text()):
            write("digest", b"\x02" + literal.encode().decode("unicode_escape").encode())
    write("digest", b"\x02acme\x00s3cret\x00sip:+14155550100@127.0.0.1\x000a4f113b")
    write("digest", b'\x00j"o\\e\x00p@ss w\xc3\xb6rd\x00sip:x@[2001:db8::1]:5060;transport=tcp\x00c')
    for literal in re.findall(r'"((?:X|x)-[A-Za-z-]+)",\s*"((?:[^"\\]|\\.)*)"',
                              (ROOT / "src" / "call" / "headers.rs").read_text()):
        headers.add(f"{literal[0]}: {literal[1].encode().decode('unicode_escape')}")
    write("headers", b'X-Trunkline-Session-Custom-Data: {"a":"b","n":1.5e3,"deep":[1,{"x":null}],'
          b'"\\u0000":"\\ud800"}\nX-Trunkline-Agent-ID: billing\nx-trunkline-number: +1')
    lines = sorted(headers)
    for start in range(0, len(lines), 4):
        write("headers", "\n".join(lines[start:start + 4]).encode())
    write("headers", "\n".join(lines).encode())
    for yaml in sorted((ROOT / "examples").glob("*.yaml")) + sorted(
            (ROOT / "tests" / "golden").glob("*.in.yaml")):
        write("config_yaml", yaml.read_bytes())


if __name__ == "__main__":
    main()
