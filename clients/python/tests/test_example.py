"""examples/agent_loop.py runs end to end against the real server and cleans up."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import sandpit

from .conftest import REPO, Server


def test_agent_loop_example(server: Server) -> None:
    env = {**os.environ, "SANDPIT_URL": server.url}
    env.pop("SANDPIT_AUTH_TOKEN", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "agent_loop.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "attempt 1: exit 1" in out and "NameError" in out
    assert "attempt 2: exit 0" in out
    assert "'sum': 639" in out and "verified: True" in out
    created = re.search(r"sandbox (\S+) created", out)
    assert created, out
    with server.client() as c:
        with pytest.raises(sandpit.NotFoundError):
            c.get(created.group(1))
