"""``exec`` with per-line callbacks (streamed under the hood), and ``files.write`` of str and
bytes, through the sync and asyncio SDK against the real server."""

from __future__ import annotations

import threading
from typing import List

import pytest

import sandpit
from sandpit import AsyncClient, Sandbox

from .conftest import Server

# Three stdout lines, one stderr line, and a last line without a newline.
SCRIPT = "for i in 1 2 3; do echo line$i; sleep 0.3; done; echo oops >&2; printf tail; exit 4"


def test_exec_calls_back_per_line_and_returns_the_whole_result(sandbox: Sandbox) -> None:
    out: List[str] = []
    err: List[str] = []

    # The command waits for a file that only the first line's callback writes: callbacks
    # run while it runs (not replayed at the end, which would time the command out).
    def on_line(line: str) -> None:
        if not out:
            sandbox.files.write("/workspace/go", "")
        out.append(line)

    gated = "echo line0; until [ -e /workspace/go ]; do sleep 0.05; done; " + SCRIPT
    result = sandbox.exec(gated, on_stdout=on_line, on_stderr=err.append, timeout_ms=60_000)
    assert not result.timed_out, result
    assert out == ["line0", "line1", "line2", "line3", "tail"]
    assert err == ["oops"]
    assert result.exit_code == 4 and not result.ok
    assert result.stdout == "line0\nline1\nline2\nline3\ntail"
    assert result.stderr == "oops\n"


def test_only_one_callback_and_sessions(sandbox: Sandbox) -> None:
    err: List[str] = []
    result = sandbox.exec("echo a; echo b >&2; echo c >&2", on_stderr=err.append)
    assert err == ["b", "c"] and result.stdout == "a\n" and result.exit_code == 0
    sandbox.session.exec("cd /tmp && export MODE=lines")
    got: List[str] = []
    assert sandbox.session.exec("echo $MODE; pwd", on_stdout=got.append).ok
    assert got == ["lines", "/tmp"]


def test_a_raising_callback_stops_the_command(sandbox: Sandbox) -> None:
    def stop(line: str) -> None:
        raise RuntimeError(f"stop at {line}")

    with pytest.raises(RuntimeError, match="stop at go"):
        sandbox.exec("echo go; sleep 300; touch /workspace/finished", on_stdout=stop)
    # The stream was left with kill_on_disconnect: the command is gone, not left running.
    for _ in range(300):
        if "sleep 300" not in sandbox.exec("ps -eo args").stdout:
            break
        threading.Event().wait(0.1)
    assert "sleep 300" not in sandbox.exec("ps -eo args").stdout
    assert not sandbox.files.exists("/workspace/finished")


def test_files_write_takes_str_and_bytes(sandbox: Sandbox) -> None:
    sandbox.files.write("/workspace/s.txt", "naïve\n")
    sandbox.files.write("/workspace/b.bin", bytes(range(256)))
    assert sandbox.files.read("/workspace/s.txt") == "naïve\n".encode()
    assert sandbox.files.read_text("/workspace/s.txt") == "naïve\n"
    assert sandbox.files.read("/workspace/b.bin") == bytes(range(256))


async def test_async_exec_callbacks_plain_and_coroutine(server: Server) -> None:
    async with AsyncClient(server.url) as c, c.create() as sb:
        out: List[str] = []
        err: List[str] = []

        async def on_err(line: str) -> None:
            err.append(line)

        result = await sb.exec(SCRIPT, on_stdout=out.append, on_stderr=on_err)
        assert out == ["line1", "line2", "line3", "tail"] and err == ["oops"]
        assert result.exit_code == 4 and result.stdout.startswith("line1\n")
        await sb.files.write("/workspace/a.txt", "str")
        await sb.files.write("/workspace/b.bin", b"\x01\x02")
        assert await sb.files.read("/workspace/a.txt") == b"str"
        assert await sb.files.read("/workspace/b.bin") == b"\x01\x02"
        with pytest.raises(sandpit.NotFoundError):
            await sb.exec("true", session="no-such-session", on_stdout=out.append)
