"""The unmodified ``e2b`` SDK against sandpit: lifecycle, commands and files."""

from __future__ import annotations

import threading
import time

import pytest
from e2b import (
    CommandExitException,
    NotFoundException,
    Sandbox,
    SandboxQuery,
    SandboxState,
    TimeoutException,
)


def test_create_run_and_kill(server):
    sb = Sandbox.create(timeout=120, metadata={"suite": "e2b", "case": "lifecycle"}, envs={"GREETING": "hi"})
    try:
        assert sb.sandbox_id
        r = sb.commands.run("echo $GREETING from $(whoami 2>/dev/null || id -u)")
        assert r.exit_code == 0
        assert r.stdout.startswith("hi from")
        info = sb.get_info()
        assert info.sandbox_id == sb.sandbox_id
        assert info.metadata == {"suite": "e2b", "case": "lifecycle"}
        assert info.state == SandboxState.RUNNING
        assert sb.is_running()
    finally:
        assert sb.kill() is True
    assert not sb.is_running()
    # A second kill finds nothing.
    assert Sandbox.kill(sb.sandbox_id) is False


def test_foreground_output_and_callbacks(sandbox):
    out, err = [], []
    r = sandbox.commands.run(
        "echo one; echo two >&2; echo three",
        on_stdout=out.append,
        on_stderr=err.append,
    )
    assert r.stdout == "one\nthree\n"
    assert r.stderr == "two\n"
    assert "".join(out) == "one\nthree\n"
    assert "".join(err) == "two\n"


def test_cwd_and_envs(sandbox):
    r = sandbox.commands.run("pwd; echo $A", cwd="/tmp", envs={"A": "b c"})
    assert r.stdout == "/tmp\nb c\n"


def test_non_zero_exit_raises(sandbox):
    with pytest.raises(CommandExitException) as e:
        sandbox.commands.run("echo bad >&2; exit 3")
    assert e.value.exit_code == 3
    assert "bad" in e.value.stderr


def _sleepers(sandbox, what: str) -> list[str]:
    out = sandbox.commands.run("ps -eo args").stdout
    return [line for line in out.splitlines() if line.strip() == what]


def test_command_timeout(sandbox):
    with pytest.raises(TimeoutException):
        sandbox.commands.run("sleep 30", timeout=1)
    # The timeout kills the command (as envd does), not only its stream.
    for _ in range(50):
        if not _sleepers(sandbox, "sleep 30"):
            break
        time.sleep(0.1)
    assert _sleepers(sandbox, "sleep 30") == []
    assert all("sleep 30" not in p.args for p in sandbox.commands.list())


def test_background_command_timeout_kills_it(sandbox):
    h = sandbox.commands.run("sleep 31", background=True, timeout=1)
    with pytest.raises(TimeoutException):
        h.wait()
    for _ in range(50):
        if not _sleepers(sandbox, "sleep 31"):
            break
        time.sleep(0.1)
    assert _sleepers(sandbox, "sleep 31") == []
    # timeout=0: no limit.
    h = sandbox.commands.run("sleep 2; echo done", background=True, timeout=0)
    assert h.wait().stdout == "done\n"


def test_background_wait_list_and_kill(sandbox):
    h = sandbox.commands.run("for i in 1 2 3; do echo $i; sleep 0.1; done", background=True)
    r = h.wait()
    assert r.stdout == "1\n2\n3\n"
    long = sandbox.commands.run("sleep 60", background=True)
    pids = [p.pid for p in sandbox.commands.list()]
    assert long.pid in pids
    assert sandbox.commands.kill(long.pid) is True
    with pytest.raises(CommandExitException):
        long.wait()
    assert long.pid not in [p.pid for p in sandbox.commands.list()]
    assert sandbox.commands.kill(long.pid) is False


def test_stdin_and_connect(sandbox):
    h = sandbox.commands.run("read line; echo got $line", background=True, stdin=True)
    sandbox.commands.send_stdin(h.pid, "hello\n")
    assert h.wait().stdout == "got hello\n"
    # Connecting to a running command sees its later output.
    bg = sandbox.commands.run("sleep 0.5; echo late", background=True)
    again = sandbox.commands.connect(bg.pid)
    assert again.wait().stdout == "late\n"


def test_files(sandbox):
    info = sandbox.files.write("/workspace/dir/a.txt", "hello e2b")
    assert info.path == "/workspace/dir/a.txt"
    assert sandbox.files.read("/workspace/dir/a.txt") == "hello e2b"
    assert bytes(sandbox.files.read("/workspace/dir/a.txt", format="bytes")) == b"hello e2b"
    assert sandbox.files.exists("/workspace/dir/a.txt")
    assert not sandbox.files.exists("/workspace/dir/nope")
    assert sandbox.files.make_dir("/workspace/dir/sub") is True
    assert sandbox.files.make_dir("/workspace/dir/sub") is False
    sandbox.files.write("/workspace/dir/sub/b.bin", b"\x00\x01\x02")
    names = sorted(e.name for e in sandbox.files.list("/workspace/dir"))
    assert names == ["a.txt", "sub"]
    deep = sorted(e.path for e in sandbox.files.list("/workspace/dir", depth=2))
    assert deep == ["/workspace/dir/a.txt", "/workspace/dir/sub", "/workspace/dir/sub/b.bin"]
    stat = sandbox.files.get_info("/workspace/dir/a.txt")
    assert stat.size == 9 and stat.type.value == "file"
    moved = sandbox.files.rename("/workspace/dir/a.txt", "/workspace/dir/c.txt")
    assert moved.path == "/workspace/dir/c.txt"
    assert sandbox.commands.run("cat /workspace/dir/c.txt").stdout == "hello e2b"
    sandbox.files.remove("/workspace/dir")
    assert not sandbox.files.exists("/workspace/dir")
    with pytest.raises(NotFoundException):
        sandbox.files.read("/workspace/dir/c.txt")


def test_write_many_files(sandbox):
    infos = sandbox.files.write_files([
        {"path": "/workspace/m/one.txt", "data": "1"},
        {"path": "/workspace/m/two.txt", "data": b"2"},
    ])
    assert [i.path for i in infos] == ["/workspace/m/one.txt", "/workspace/m/two.txt"]
    assert sandbox.commands.run("cat /workspace/m/one.txt /workspace/m/two.txt").stdout == "12"


def test_set_timeout_list_and_connect(server):
    sb = Sandbox.create(timeout=60, metadata={"suite": "list", "n": "1"})
    other = Sandbox.create(timeout=60, metadata={"suite": "list", "n": "2"})
    try:
        before = sb.get_info().end_at
        sb.set_timeout(3600)
        assert sb.get_info().end_at > before
        paginator = Sandbox.list(query=SandboxQuery(metadata={"suite": "list"}), limit=1)
        seen = []
        while paginator.has_next:
            seen.extend(s.sandbox_id for s in paginator.next_items())
        assert sorted(seen) == sorted([sb.sandbox_id, other.sandbox_id])
        only = Sandbox.list(query=SandboxQuery(metadata={"suite": "list", "n": "2"})).next_items()
        assert [s.sandbox_id for s in only] == [other.sandbox_id]
        again = Sandbox.connect(sb.sandbox_id)
        assert again.commands.run("echo connected").stdout == "connected\n"
    finally:
        sb.kill()
        other.kill()


def test_unknown_sandbox(server):
    from e2b import SandboxException

    with pytest.raises(SandboxException):
        Sandbox.connect("no-such-sandbox")
    with pytest.raises(NotFoundException):
        Sandbox.get_info("no-such-sandbox")


def test_root_listener(server):
    """``--e2b-listen`` serves the same API at the root of its own port."""
    sb = Sandbox.create(api_url=server.e2b_root, sandbox_url=server.e2b_root)
    try:
        assert sb.commands.run("echo root").stdout == "root\n"
    finally:
        sb.kill()


def test_watch_dir_polling(sandbox):
    sandbox.files.make_dir("/workspace/watched")
    handle = sandbox.files.watch_dir("/workspace/watched")
    sandbox.files.write("/workspace/watched/f.txt", "1")
    events = []
    for _ in range(50):
        events += handle.get_new_events()
        if any(e.name == "f.txt" for e in events):
            break
        time.sleep(0.1)
    assert any(e.name == "f.txt" and e.type.value == "create" for e in events), events
    sandbox.files.remove("/workspace/watched/f.txt")
    for _ in range(50):
        events = handle.get_new_events()
        if events:
            break
        time.sleep(0.1)
    assert [(e.name, e.type.value) for e in events] == [("f.txt", "remove")]
    handle.stop()


def test_pty(sandbox):
    from e2b import PtySize

    data = bytearray()
    h = sandbox.pty.create(PtySize(rows=24, cols=80), cwd="/tmp", envs={"MARK": "pty-ok"})
    sandbox.pty.send_stdin(h.pid, b"echo $MARK in $(pwd); exit 7\n")
    with pytest.raises(CommandExitException) as e:
        h.wait(on_pty=data.extend)
    assert e.value.exit_code == 7
    assert b"pty-ok in /tmp" in bytes(data)
    h2 = sandbox.pty.create(PtySize(rows=24, cols=80))
    sandbox.pty.resize(h2.pid, PtySize(rows=30, cols=100))
    assert sandbox.pty.kill(h2.pid) is True
    assert sandbox.pty.kill(h2.pid) is False
