"""Harness for the E2B SDK tests: starts the real ``sandpit serve`` binary (``SANDPIT_BIN``,
default ``target/release/sandpit``) with an API key on a free loopback port, plus the
``--e2b-listen`` port, and points the unmodified ``e2b`` and ``e2b_code_interpreter``
packages at it the documented way: ``E2B_API_URL`` and ``E2B_SANDBOX_URL`` set to
``http://HOST:PORT/compat/e2b``, ``E2B_API_KEY`` set to the server's key.
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
from typing import Iterator

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = os.environ.get("SANDPIT_BIN") or str(REPO / "target" / "release" / "sandpit")
KEY = "e2b-test-key-" + os.urandom(6).hex()


@dataclass
class Server:
    url: str
    e2b_root: str
    data_dir: Path
    proc: subprocess.Popen

    @property
    def compat(self) -> str:
        return self.url + "/compat/e2b"

    def log(self) -> str:
        try:
            return (self.data_dir / "server.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start() -> Server:
    if not os.access(BIN, os.X_OK):
        pytest.fail(f"sandpit binary not found at {BIN} (build it, or set SANDPIT_BIN)")
    data_dir = Path(tempfile.mkdtemp(prefix="sandpit-e2b-"))
    data_dir.chmod(0o755)
    port, e2b_port = free_port(), free_port()
    env = dict(os.environ, SANDPIT_AUTH_TOKEN=KEY)
    log = open(data_dir / "server.log", "ab")
    proc = subprocess.Popen(
        [BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir),
         "--e2b-listen", f"127.0.0.1:{e2b_port}"],
        cwd=data_dir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
    )
    log.close()
    server = Server(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{e2b_port}", data_dir, proc)
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
        headers = {"Authorization": f"Bearer {KEY}"}
        try:
            for sb in httpx.get(server.url + "/v1/sandboxes", headers=headers).json()["sandboxes"]:
                httpx.delete(f"{server.url}/v1/sandboxes/{sb['id']}", headers=headers)
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    shutil.rmtree(server.data_dir, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def server() -> Iterator[Server]:
    s = _start()
    # The SDK reads these when it builds each connection config.
    os.environ["E2B_API_URL"] = s.compat
    os.environ["E2B_SANDBOX_URL"] = s.compat
    os.environ["E2B_API_KEY"] = KEY
    os.environ.pop("E2B_DEBUG", None)
    os.environ.pop("E2B_DOMAIN", None)
    yield s
    _stop(s)


@pytest.fixture
def sandbox(server: Server):
    from e2b import Sandbox

    sb = Sandbox.create(timeout=300)
    yield sb
    try:
        sb.kill()
    except Exception:
        pass


@pytest.fixture
def interp(server: Server):
    from e2b_code_interpreter import Sandbox

    sb = Sandbox.create(timeout=300)
    yield sb
    try:
        sb.kill()
    except Exception:
        pass
