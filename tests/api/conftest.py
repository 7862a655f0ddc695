"""The call API tests' gateway: the built `trunkline run` binary serving a folder with one
OutboundTrunk, its call API on a free 127.0.0.1 port with a bearer token from a file.

Ports come from the block and the claim files of tests/support/net.rs (10000-19999, one file per
port under the temp dir's trunkline-tests/ports, created exclusively), so that these tests and the
Rust ones never take the same port. Nothing here leaves 127.0.0.1.

Run through tests/api/run.sh (which tests/run.sh calls, after building the binary); by hand:
    cargo build && tests/api/run.sh
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
PORTS = range(10_000, 20_000)
CLAIM_LIFETIME = 20 * 60
READY_WITHIN = 10.0
_handed_out: set[int] = set()


def binary() -> Path:
    """The trunkline binary under test: $TRUNKLINE_BIN, else the debug build."""
    if "TRUNKLINE_BIN" in os.environ:
        return Path(os.environ["TRUNKLINE_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "debug" / "trunkline"


def _claim(port: int) -> bool:
    if port in _handed_out:
        return False
    folder = Path(tempfile.gettempdir()) / "trunkline-tests" / "ports"
    folder.mkdir(parents=True, exist_ok=True)
    claim = folder / str(port)
    try:
        claim.open("x").close()
    except FileExistsError:
        try:
            if time.time() - claim.stat().st_mtime <= CLAIM_LIFETIME:
                return False
            claim.touch()
        except OSError:
            return False
    _handed_out.add(port)
    return True


def _bindable(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port() -> int:
    """A 127.0.0.1 port free for UDP and TCP now, claimed for this test run."""
    start = random.randrange(len(PORTS))
    for i in range(len(PORTS)):
        port = PORTS.start + (start + i) % len(PORTS)
        if _bindable(port, socket.SOCK_DGRAM) and _bindable(port, socket.SOCK_STREAM) and _claim(port):
            return port
    raise RuntimeError("no free 127.0.0.1 port in the test block")


def http(method: str, url: str, headers: dict[str, str] | None = None,
         body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request; (status, lower-cased headers, body). Error statuses are answers too."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


OUTBOUND_TRUNK = """\
apiVersion: trunkline.dev/v1alpha1
kind: OutboundTrunk
metadata: {{name: carrier-out, namespace: voice}}
spec:
  host: 127.0.0.1
  port: {carrier_port}
  transport: UDP
  callerId: "+14155550100"
  allowedCallerIds: ["+14155550101"]
  agents: [support]
  codecs: [PCMU, PCMA]
"""


@dataclass
class Gateway:
    """A running `trunkline run` with its call API."""

    process: subprocess.Popen
    api: str
    admin: str
    token: str
    token_file: Path
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_gateway(folder: Path, extra: list[str], api_port: int) -> tuple[subprocess.Popen, Path, str]:
    """Starts `trunkline run` on `folder`/specs with `extra` flags; (process, log, admin URL)."""
    sip, internal, admin, carrier, agent = (free_port() for _ in range(5))
    specs = folder / "specs"
    specs.mkdir(exist_ok=True)
    (specs / "outbound.yaml").write_text(OUTBOUND_TRUNK.format(carrier_port=carrier))
    log = folder / "gateway.log"
    command = [
        str(binary()), "run", "--specs", str(specs), "--state-dir", str(folder / "state"),
        "--listen", f"udp://127.0.0.1:{sip}", "--listen", f"tcp://127.0.0.1:{sip}",
        "--internal-listen", f"udp://127.0.0.1:{internal}",
        "--admin", f"127.0.0.1:{admin}", "--public-address", "127.0.0.1",
        "--drain-timeout", "1",
        "--api", f"127.0.0.1:{api_port}", "--agent-uri", f"sip:127.0.0.1:{agent}",
        *extra,
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "NO_COLOR": "1", "RUST_LOG": "info"})
    return process, log, f"http://127.0.0.1:{admin}"


def wait_ready(process: subprocess.Popen, admin: str, log: Path) -> None:
    deadline = time.monotonic() + READY_WITHIN
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"trunkline exited ({process.returncode}) before it was ready:\n"
                                 + log.read_text(errors="replace"))
        try:
            if http("GET", f"{admin}/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"trunkline was not ready within {READY_WITHIN}s:\n" + log.read_text(errors="replace"))


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    if not binary().exists():
        pytest.fail(f"{binary()} is missing: run `cargo build` first (tests/run.sh does)")
    folder = tmp_path_factory.mktemp("api-gateway")
    token = secrets.token_urlsafe(24)
    token_file = folder / "api-token"
    token_file.write_text(token + "\n")
    api_port = free_port()
    process, log, admin = start_gateway(folder, ["--api-token-file", str(token_file)], api_port)
    try:
        wait_ready(process, admin, log)
        yield Gateway(process, f"http://127.0.0.1:{api_port}", admin, token, token_file, log)
    finally:
        stop(process)


def error_of(body: bytes) -> tuple[str, str]:
    """(code, message) of an error body, checking its shape."""
    parsed = json.loads(body)
    assert set(parsed) == {"error"} and set(parsed["error"]) == {"code", "message"}, parsed
    return parsed["error"]["code"], parsed["error"]["message"]
