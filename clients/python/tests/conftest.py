"""Test harness: starts the real ``sandpit serve`` binary on a free loopback port.

``SANDPIT_BIN`` names the binary (default: the repository's ``target/release/sandpit``).
Two servers per test session: one without auth (``server``) and one with a token
(``auth_server``). Each is stopped at the end after deleting every sandbox left on it
(sandboxes outlive the server otherwise).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import httpx
import pytest

import sandpit

REPO = Path(__file__).resolve().parents[3]
BIN = os.environ.get("SANDPIT_BIN") or str(REPO / "target" / "release" / "sandpit")


@dataclass
class Server:
    url: str
    token: Optional[str]
    data_dir: Path
    proc: subprocess.Popen[bytes]

    def log(self) -> str:
        try:
            return (self.data_dir / "server.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def client(self) -> sandpit.Client:
        return sandpit.Client(self.url, self.token)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(token: Optional[str], args: Sequence[str] = ()) -> Server:
    if not os.access(BIN, os.X_OK):
        pytest.fail(f"sandpit binary not found at {BIN} (build it, or set SANDPIT_BIN)")
    data_dir = Path(tempfile.mkdtemp(prefix="sandpit-pytest-"))
    # Sandbox uids must be able to traverse the data dir.
    data_dir.chmod(0o755)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "SANDPIT_AUTH_TOKEN"}
    if token:
        env["SANDPIT_AUTH_TOKEN"] = token
    log = open(data_dir / "server.log", "ab")
    proc = subprocess.Popen(
        [BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir), *args],
        cwd=data_dir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    log.close()
    server = Server(f"http://127.0.0.1:{port}", token, data_dir, proc)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            pytest.fail(f"sandpit serve exited with {proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            _stop(server)
            pytest.fail(f"sandpit serve did not answer /health in 30 s:\n{server.log()}")
        time.sleep(0.05)


def _stop(server: Server) -> None:
    if server.proc.poll() is None:
        try:
            with server.client() as c:
                for sb in c.list():
                    try:
                        sb.delete()
                    except sandpit.SandpitError:
                        pass
        except sandpit.SandpitError:
            pass
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    shutil.rmtree(server.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    s = _start(None)
    yield s
    _stop(s)


@pytest.fixture(scope="session")
def auth_server() -> Iterator[Server]:
    s = _start("test-token-" + os.urandom(6).hex())
    yield s
    _stop(s)


@pytest.fixture
def client(server: Server) -> Iterator[sandpit.Client]:
    with server.client() as c:
        yield c


@pytest.fixture
def sandbox(client: sandpit.Client) -> Iterator[sandpit.Sandbox]:
    with client.create() as sb:
        yield sb


def wait_until(condition: Callable[[], bool], attempts: int = 300) -> bool:
    """Polls ``condition`` every 0.1 s until it holds; False after ``attempts`` (30 s by
    default: a bound for a hung server, not a performance check)."""
    for _ in range(attempts):
        if condition():
            return True
        time.sleep(0.1)
    return condition()
