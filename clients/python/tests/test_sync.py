"""The synchronous SDK against the real server: every capability once."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import httpx
import pytest

import sandpit
from sandpit import (
    Client,
    ExitEvent,
    Sandbox,
    StartEvent,
    StderrEvent,
    StdoutEvent,
)

from .conftest import Server, free_port, wait_until


def test_client_reads_url_and_token_from_the_environment(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDPIT_URL", server.url)
    monkeypatch.delenv("SANDPIT_AUTH_TOKEN", raising=False)
    with Client() as c:
        assert c.base_url == server.url
        assert c.health()["status"] == "ok"


def test_exec_shell_argv_cwd_env_stdin(sandbox: Sandbox) -> None:
    r = sandbox.exec("echo out; echo err >&2; exit 3")
    assert (r.stdout, r.stderr, r.exit_code, r.timed_out) == ("out\n", "err\n", 3, False)
    assert not r.ok
    with pytest.raises(sandpit.CommandError) as info:
        r.check()
    assert info.value.exit_code == 3 and info.value.code == "command_failed" and "err" in str(info.value)

    r = sandbox.exec(
        ["python3", "-c", "import sys, os; print(sys.argv[1:], os.getcwd(), os.environ['K'])", "a b"],
        cwd="/tmp",
        env={"K": "v"},
    )
    assert r.check().stdout == "['a b'] /tmp v\n"
    assert sandbox.exec("cat", stdin="piped").stdout == "piped"
    assert sandbox.exec(["no-such-program"]).exit_code == 127


def test_exec_timeout_is_reported(sandbox: Sandbox) -> None:
    r = sandbox.exec("sleep 30", timeout_ms=300)
    assert r.timed_out and not r.ok
    with pytest.raises(sandpit.CommandError, match="timed out"):
        r.check()


def test_stream_yields_output_while_the_command_runs(sandbox: Sandbox) -> None:
    # The command waits for a file the test creates only after it has seen the first line:
    # a buffered (non-streaming) answer would never get there and end in the timeout.
    cmd = "echo first; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo second; echo oops >&2; exit 4"
    events = []
    for ev in sandbox.stream(cmd, timeout_ms=60_000):
        events.append(ev)
        if isinstance(ev, StdoutEvent) and "first" in ev.data:
            sandbox.files.write("/tmp/go", b"")
    assert isinstance(events[0], StartEvent) and events[0].pid > 0
    last = events[-1]
    assert isinstance(last, ExitEvent)
    assert last.exit_code == 4 and not last.timed_out
    assert "".join(e.data for e in events if isinstance(e, StdoutEvent)) == "first\nsecond\n"
    assert "".join(e.data for e in events if isinstance(e, StderrEvent)) == "oops\n"


def test_leaving_a_stream_early_closes_it(sandbox: Sandbox) -> None:
    # kill_on_disconnect: closing the stream (leaving the loop) kills the command.
    for ev in sandbox.stream("echo up; exec sleep 601", kill_on_disconnect=True):
        if isinstance(ev, StdoutEvent):
            break
    assert wait_until(lambda: "sleep 601" not in sandbox.exec("ps -eo args").stdout)
    # Without it the command keeps running after the client has gone.
    for ev in sandbox.stream("echo up; exec sleep 602"):
        if isinstance(ev, StdoutEvent):
            break
    assert "sleep 602" in sandbox.exec("ps -eo args").stdout


def test_default_session_keeps_cd_and_export(sandbox: Sandbox) -> None:
    assert sandbox.session.id == "default"
    assert sandbox.session.cwd == "/workspace"  # started on first use
    sandbox.session.exec("mkdir -p /tmp/proj && cd /tmp/proj && export GREETING=hello && f() { echo fn; }")
    r = sandbox.session.exec("echo $GREETING; pwd; f")
    assert r.check().stdout == "hello\n/tmp/proj\nfn\n"
    assert sandbox.session.cwd == "/tmp/proj"
    # The same session through exec(session=...), streamed.
    out = "".join(e.data for e in sandbox.stream("pwd", session="default") if isinstance(e, StdoutEvent))
    assert out == "/tmp/proj\n"
    # Plain exec is stateless.
    assert sandbox.exec("echo ${GREETING:-none}; pwd").stdout == "none\n/workspace\n"


def test_sessions_create_list_delete(sandbox: Sandbox) -> None:
    s = sandbox.sessions.create("work", cwd="/tmp", env={"MODE": "x"})
    assert s.id == "work" and s.info is not None and s.info.cwd == "/tmp"
    assert s.exec("echo $MODE; pwd").stdout == "x\n/tmp\n"
    assert "work" in [x.id for x in sandbox.sessions.list()]
    assert sandbox.sessions.get("work").id == "work"
    with pytest.raises(sandpit.ConflictError) as info:
        sandbox.sessions.create("work")
    assert info.value.code == "already_exists"
    s.delete()
    with pytest.raises(sandpit.NotFoundError):
        s.exec("true")


def test_background_processes(sandbox: Sandbox) -> None:
    p = sandbox.processes.start("echo ready; cat; echo bye >&2", id="catter")
    assert p.id == "catter" and p.status == "running"
    assert "catter" in [x.id for x in sandbox.processes.list()]
    p.stdin("line one\n")
    p.stdin("line two\n", eof=True)
    info = p.wait(timeout_ms=20_000)
    assert info.status == "exited" and info.exit_code == 0
    logs = p.logs()
    assert logs.stdout == "ready\nline one\nline two\n" and logs.stderr == "bye\n"
    assert p.logs(stdout_offset=logs.stdout_offset).stdout == ""
    assert p.logs(stdout_offset=6).stdout == "line one\nline two\n"
    events = list(p.stream_logs())
    assert isinstance(events[-1], ExitEvent) and events[-1].exit_code == 0
    assert "".join(e.data for e in events if isinstance(e, StdoutEvent)) == logs.stdout
    with pytest.raises(sandpit.ConflictError) as conflict:
        p.stdin("late")
    assert conflict.value.code == "not_running"
    p.delete()
    with pytest.raises(sandpit.NotFoundError):
        sandbox.processes.get("catter")


def test_process_wait_port_signal_and_kill(sandbox: Sandbox) -> None:
    web = sandbox.processes.start(["python3", "-m", "http.server", "8000", "--bind", "127.0.0.1"], cwd="/tmp")
    assert web.wait_port(8000, timeout_ms=30_000).ready
    assert (
        sandbox.exec(
            "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/').status)\""
        ).stdout
        == "200\n"
    )
    web.signal("SIGTERM")
    assert web.wait(timeout_ms=20_000).status == "exited"

    sleeper = sandbox.processes.start("sleep 600")
    sleeper.kill()
    assert sleeper.wait(timeout_ms=20_000).exit_code == 137
    assert sandbox.processes.get(sleeper.id).status == "exited"

    quick = sandbox.processes.start("exit 0")
    with pytest.raises(sandpit.ConflictError) as info:
        quick.wait_port(9, timeout_ms=20_000)
    assert info.value.code == "not_running"


def test_files_write_read_list_stat_move_remove(sandbox: Sandbox) -> None:
    f = sandbox.files
    f.write("/workspace/dir/a.txt", b"alpha")
    f.write_text("/workspace/dir/b.txt", "béta")
    assert f.read("/workspace/dir/a.txt") == b"alpha"
    assert f.read_text("/workspace/dir/b.txt") == "béta"
    entries = f.list("/workspace/dir")
    assert [(e.name, e.type, e.size) for e in entries] == [("a.txt", "file", 5), ("b.txt", "file", 5)]
    st = f.stat("/workspace/dir")
    assert st.is_dir and not st.is_file and st.path == "/workspace/dir"
    f.mkdir("/workspace/x/y/z")
    assert f.stat("/workspace/x/y/z").is_dir
    f.move("/workspace/dir/a.txt", "/workspace/x/a.txt")
    assert not f.exists("/workspace/dir/a.txt") and f.exists("/workspace/x/a.txt")
    with pytest.raises(sandpit.ConflictError) as info:
        f.remove("/workspace/x")
    assert info.value.code == "not_empty"
    f.remove("/workspace/x", recursive=True)
    assert not f.exists("/workspace/x")
    # The sandbox sees what the API wrote.
    assert sandbox.exec("cat /workspace/dir/b.txt").stdout == "béta"


def test_file_errors_carry_codes(sandbox: Sandbox) -> None:
    with pytest.raises(sandpit.NotFoundError) as nf:
        sandbox.files.read("/workspace/missing")
    assert (nf.value.code, nf.value.status) == ("not_found", 404)
    with pytest.raises(sandpit.BadRequestError) as rel:
        sandbox.files.read("relative/path")
    assert rel.value.code == "invalid_path"
    with pytest.raises(sandpit.BadRequestError) as isdir:
        sandbox.files.read("/workspace")
    assert isdir.value.code == "is_a_directory"
    with pytest.raises(sandpit.BadRequestError) as notdir:
        sandbox.files.write("/workspace/f", b"x")
        sandbox.files.list("/workspace/f")
    assert notdir.value.code == "not_a_directory"


def test_ten_megabyte_streamed_upload_and_download(sandbox: Sandbox, tmp_path: Path) -> None:
    data = os.urandom(10 * 1024 * 1024)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    sandbox.files.upload("/workspace/big.bin", src, chunk_size=256 * 1024)
    assert sandbox.files.stat("/workspace/big.bin").size == len(data)
    digest = hashlib.sha256(data).hexdigest()
    assert sandbox.exec("sha256sum /workspace/big.bin").stdout.split()[0] == digest

    dest = tmp_path / "back.bin"
    assert sandbox.files.download("/workspace/big.bin", dest) == len(data)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest

    h = hashlib.sha256()
    chunks = 0
    for chunk in sandbox.files.iter_read("/workspace/big.bin", chunk_size=1 << 20):
        h.update(chunk)
        chunks += 1
    assert h.hexdigest() == digest and chunks > 1

    # From and to file objects.
    sandbox.files.upload("/workspace/small.bin", io.BytesIO(b"0123456789" * 1000), chunk_size=333)
    buf = io.BytesIO()
    assert sandbox.files.download("/workspace/small.bin", buf) == 10_000
    assert buf.getvalue() == b"0123456789" * 1000


def test_run_code_keeps_state_and_reports_errors(sandbox: Sandbox) -> None:
    first = sandbox.run_code("x = 41\nprint('set')")
    assert first.stdout == "set\n" and first.results == [] and first.ok
    second = sandbox.run_code("x + 1")
    assert second.text == "42" and second.main_result is not None and second.main_result.is_main_result
    assert second.execution_count > first.execution_count
    failed = sandbox.run_code("1 / 0")
    assert failed.error is not None and failed.error.name == "ZeroDivisionError"
    assert "ZeroDivisionError" in failed.error.traceback
    with pytest.raises(sandpit.CodeError) as info:
        failed.check()
    assert info.value.name == "ZeroDivisionError"
    assert sandbox.run_code("x", locals=True).locals == {"x": "41"}


def test_run_code_png_and_rich_reprs(sandbox: Sandbox) -> None:
    ex = sandbox.run_code(
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "plt.plot([1, 3, 2])\nplt.title('sdk')\nNone"
    )
    assert ex.ok, ex.error
    pngs = [r for r in ex.results if r.png]
    assert len(pngs) == 1
    png = pngs[0]._repr_png_()
    assert png is not None and png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    bundle = pngs[0]._repr_mimebundle_()
    assert "image/png" in bundle and isinstance(bundle["image/png"], str)

    html = sandbox.run_code(
        "class T:\n"
        "    def _repr_html_(self):\n        return '<b>hi</b>'\n"
        "    def __repr__(self):\n        return 'T'\n"
        "T()"
    )
    main = html.main_result
    assert main is not None and main._repr_html_() == "<b>hi</b>" and main.text == "T"
    assert set(main.formats) >= {"text/html", "text/plain"}
    assert main._repr_png_() is None


def test_stream_code_events(sandbox: Sandbox) -> None:
    events = list(sandbox.stream_code("print('a')\nprint('b')\n6 * 7"))
    assert isinstance(events[0], StartEvent)
    assert "".join(e.data for e in events if isinstance(e, StdoutEvent)) == "a\nb\n"
    last = events[-1]
    assert isinstance(last, sandpit.ResultEvent) and last.execution.text == "42"


def test_code_contexts(sandbox: Sandbox) -> None:
    ctx = sandbox.contexts.create("python", id="calc", context={"items": [1, 2, 3]})
    assert ctx.id == "calc" and ctx.info.language == "python" and ctx.info.status == "running"
    assert ctx.run("total = sum(context['items'])\ntotal").text == "6"
    assert ctx.run("total * 2").text == "12"
    # State is per context.
    assert sandbox.run_code("'total' in dir()").text == "False"
    assert sandbox.run_code("total", context=ctx).text == "6"
    js = sandbox.contexts.create("javascript")
    assert js.run("let y = 20; y + 1").text == "21"
    assert {c.id for c in sandbox.contexts.list()} >= {"calc", js.id}
    ctx.restart()
    gone = ctx.run("total")
    assert gone.error is not None and gone.error.name == "NameError"
    ctx.delete()
    with pytest.raises(sandpit.NotFoundError):
        sandbox.contexts.get("calc")


def test_sandbox_lifecycle_and_context_manager(client: Client) -> None:
    with client.create(keepalive_seconds=120, env={"FROM_SANDBOX": "yes"}, limits={"pids": 256}) as sb:
        assert sb.status == "running" and sb.info.keepalive_seconds == 120
        assert sb.info.limits.pids == 256 and sb.info.created_at is not None
        assert sb.exec("echo $FROM_SANDBOX").stdout == "yes\n"
        before = sb.info.expires_at
        assert sb.keepalive().expires_at is not None and before is not None
        assert sb.set_keepalive(0).expires_at is None
        assert sb.refresh().id == sb.id
        assert sb.id in [x.id for x in client.list()]
        assert client.get(sb.id).id == sb.id
        sid = sb.id
    with pytest.raises(sandpit.NotFoundError):
        client.get(sid)

    # Deleted on exit even when the block raises.
    with pytest.raises(RuntimeError):
        with client.create() as sb2:
            sid2 = sb2.id
            raise RuntimeError("boom")
    with pytest.raises(sandpit.NotFoundError):
        client.get(sid2)


def test_api_errors_map_to_exceptions(client: Client) -> None:
    with pytest.raises(sandpit.NotFoundError) as nf:
        client.get("no-such-sandbox")
    assert nf.value.code == "not_found" and nf.value.status == 404 and "no-such-sandbox" in nf.value.message
    with pytest.raises(sandpit.BadRequestError) as bad:
        client.create("not a valid id!")
    assert bad.value.code == "invalid_id"
    with client.create() as sb:
        with pytest.raises(sandpit.ConflictError) as dup:
            client.create(sb.id)
        assert dup.value.code == "already_exists" and dup.value.status == 409
        with pytest.raises(sandpit.BadRequestError) as cwd:
            sb.exec("pwd", cwd="/no/such/dir")
        assert cwd.value.code == "invalid_path"
        with pytest.raises(ValueError):
            sb.exec([])  # refused before any request
    assert issubclass(sandpit.NotFoundError, sandpit.SandpitError)


def test_auth_errors(auth_server: Server) -> None:
    with sandpit.Client(auth_server.url, token="") as anonymous:
        assert anonymous.health()["status"] == "ok"
        with pytest.raises(sandpit.AuthError) as info:
            anonymous.list()
        assert info.value.code == "unauthorized" and info.value.status == 401
    with sandpit.Client(auth_server.url, token="wrong") as wrong:
        with pytest.raises(sandpit.AuthError):
            wrong.create()
    with auth_server.client() as ok, ok.create() as sb:
        assert sb.exec("echo authed").stdout == "authed\n"


def test_own_httpx_client_gets_the_token_and_base_url(auth_server: Server) -> None:
    seen: list[str] = []

    def hook(request: httpx.Request) -> None:
        seen.append(f"{request.method} {request.url.path} {request.headers.get('authorization', '-')}")

    with httpx.Client(event_hooks={"request": [hook]}) as http:
        c = sandpit.Client(auth_server.url, token=auth_server.token, http=http)
        assert isinstance(c.list(), list)
        c.close()  # does not close a pool it does not own
        assert http.get(auth_server.url + "/health").status_code == 200
    assert seen[0] == f"GET /v1/sandboxes Bearer {auth_server.token}"


def test_connection_errors() -> None:
    port = free_port()  # bound, then closed: nothing listens there
    with sandpit.Client(f"http://127.0.0.1:{port}", retries=1) as c:
        with pytest.raises(sandpit.ConnectionError) as info:
            c.list()
    assert info.value.code == "connection_error" and info.value.status is None
    assert isinstance(info.value, sandpit.SandpitError)
