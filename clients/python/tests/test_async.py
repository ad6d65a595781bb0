"""The asyncio SDK against the real server."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import AsyncIterator

import pytest

import sandpit
from sandpit import AsyncClient, AsyncSandbox, ExitEvent, StartEvent, StdoutEvent

from .conftest import Server


@pytest.fixture
async def aclient(server: Server) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server.url) as c:
        yield c


@pytest.fixture
async def asandbox(aclient: AsyncClient) -> AsyncIterator[AsyncSandbox]:
    async with aclient.create() as sb:
        yield sb


async def test_exec_and_check(asandbox: AsyncSandbox) -> None:
    r = await asandbox.exec("echo hi; echo err >&2")
    assert (r.stdout, r.stderr, r.exit_code) == ("hi\n", "err\n", 0)
    bad = await asandbox.exec(["sh", "-c", "exit 5"])
    with pytest.raises(sandpit.CommandError) as info:
        bad.check()
    assert info.value.exit_code == 5


async def test_concurrent_execs_share_one_client(asandbox: AsyncSandbox) -> None:
    results = await asyncio.gather(*(asandbox.exec(f"echo {i}") for i in range(8)))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(8)]


async def test_stream_is_an_async_iterator(asandbox: AsyncSandbox) -> None:
    cmd = "echo first; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo second"
    events = []
    async for ev in asandbox.stream(cmd, timeout_ms=60_000):
        events.append(ev)
        if isinstance(ev, StdoutEvent) and "first" in ev.data:
            await asandbox.files.write("/tmp/go", b"")
    assert isinstance(events[0], StartEvent)
    assert isinstance(events[-1], ExitEvent) and events[-1].exit_code == 0 and not events[-1].timed_out
    assert "".join(e.data for e in events if isinstance(e, StdoutEvent)) == "first\nsecond\n"


async def test_sessions_persist_state(asandbox: AsyncSandbox) -> None:
    await asandbox.session.exec("cd /tmp && export N=7")
    assert (await asandbox.session.exec("echo $N; pwd")).stdout == "7\n/tmp\n"
    assert await asandbox.session.cwd() == "/tmp"
    other = await asandbox.sessions.create(cwd="/workspace")
    assert (await other.exec("echo ${N:-unset}; pwd")).stdout == "unset\n/workspace\n"
    await other.delete()
    with pytest.raises(sandpit.NotFoundError):
        await asandbox.sessions.get(other.id)


async def test_processes(asandbox: AsyncSandbox) -> None:
    p = await asandbox.processes.start("read x; echo got $x", id="reader")
    await p.stdin("value\n")
    assert (await p.wait(timeout_ms=20_000)).exit_code == 0
    assert (await p.logs()).stdout == "got value\n"
    events = [e async for e in p.stream_logs()]
    assert isinstance(events[-1], ExitEvent)
    assert [x.id for x in await asandbox.processes.list()] == ["reader"]
    await p.delete()
    assert await asandbox.processes.list() == []


async def test_files_and_ten_megabyte_stream(asandbox: AsyncSandbox, tmp_path: Path) -> None:
    f = asandbox.files
    await f.write_text("/workspace/a.txt", "async text")
    assert await f.read_text("/workspace/a.txt") == "async text"
    assert [e.name for e in await f.list("/workspace")] == ["a.txt"]
    assert (await f.stat("/workspace/a.txt")).size == 10

    data = os.urandom(10 * 1024 * 1024)
    digest = hashlib.sha256(data).hexdigest()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 512 * 1024):
            yield data[i : i + 512 * 1024]

    await f.upload("/workspace/big.bin", chunks())
    assert (await asandbox.exec("sha256sum /workspace/big.bin")).stdout.split()[0] == digest
    src = tmp_path / "src.bin"
    src.write_bytes(data[:1_000_000])
    await f.upload("/workspace/from-path.bin", src)
    assert (await f.stat("/workspace/from-path.bin")).size == 1_000_000

    dest = tmp_path / "back.bin"
    assert await f.download("/workspace/big.bin", dest) == len(data)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest
    h = hashlib.sha256()
    async for chunk in f.iter_read("/workspace/big.bin"):
        h.update(chunk)
    assert h.hexdigest() == digest

    await f.move("/workspace/big.bin", "/workspace/moved.bin")
    await f.remove("/workspace/moved.bin")
    assert not await f.exists("/workspace/moved.bin")


async def test_run_code_state_png_and_contexts(asandbox: AsyncSandbox) -> None:
    await asandbox.run_code("import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nn = 3")
    ex = await asandbox.run_code("plt.bar(range(n), [1, 2, 3])\nn * 2")
    assert ex.text == "6"
    png = next(r for r in ex.results if r.png)._repr_png_()
    assert png is not None and png.startswith(b"\x89PNG")
    events = [e async for e in asandbox.stream_code("print('s')\nn")]
    last = events[-1]
    assert isinstance(last, sandpit.ResultEvent) and last.execution.text == "3"
    ctx = await asandbox.contexts.create("python", context="raw text")
    assert (await ctx.run("context.upper()")).text == "'RAW TEXT'"
    await ctx.delete()


async def test_errors_and_context_manager_deletion(aclient: AsyncClient) -> None:
    with pytest.raises(sandpit.NotFoundError) as info:
        await aclient.get("no-such-async-sandbox")
    assert info.value.code == "not_found" and info.value.status == 404
    async with aclient.create() as sb:
        sid = sb.id
        assert sid in [s.id for s in await aclient.list()]
        with pytest.raises(sandpit.BadRequestError) as bad:
            await sb.files.read("/workspace")
        assert bad.value.code == "is_a_directory"
    with pytest.raises(sandpit.NotFoundError):
        await aclient.get(sid)
    plain = await aclient.create()
    assert (await plain.refresh()).status == "running"
    await plain.delete()
    with pytest.raises(sandpit.NotFoundError):
        await plain.delete()


async def test_async_auth_error(auth_server: Server) -> None:
    async with AsyncClient(auth_server.url, token="") as anonymous:
        with pytest.raises(sandpit.AuthError) as info:
            await anonymous.list()
        assert info.value.code == "unauthorized"
    async with AsyncClient(auth_server.url, token=auth_server.token) as ok:
        assert isinstance(await ok.list(), list)
