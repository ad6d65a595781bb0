"""The SDKs' async flavours: ``e2b.AsyncSandbox`` and ``e2b_code_interpreter.AsyncSandbox``."""

from __future__ import annotations

import pytest
from e2b import AsyncSandbox, CommandExitException


@pytest.mark.asyncio
async def test_async_sandbox(server):
    sb = await AsyncSandbox.create(timeout=120)
    try:
        out = []
        r = await sb.commands.run("echo async; echo e >&2", on_stdout=out.append)
        assert r.stdout == "async\n" and r.stderr == "e\n"
        assert "".join(out) == "async\n"
        with pytest.raises(CommandExitException):
            await sb.commands.run("exit 4")
        await sb.files.write("/workspace/x.txt", "async file")
        assert await sb.files.read("/workspace/x.txt") == "async file"
        assert [e.name for e in await sb.files.list("/workspace")] == ["x.txt"]
        h = await sb.commands.run("sleep 0.2; echo bg", background=True)
        assert (await h.wait()).stdout == "bg\n"
        assert (await sb.get_info()).sandbox_id == sb.sandbox_id
    finally:
        assert await sb.kill() is True


@pytest.mark.asyncio
async def test_async_watch_dir(server):
    sb = await AsyncSandbox.create(timeout=120)
    try:
        await sb.files.make_dir("/workspace/w")
        events = []
        handle = await sb.files.watch_dir("/workspace/w", on_event=events.append)
        await sb.files.write("/workspace/w/new.txt", "x")
        for _ in range(50):
            if any(e.name == "new.txt" for e in events):
                break
            await __import__("asyncio").sleep(0.1)
        await handle.stop()
        assert any(e.name == "new.txt" and e.type.value == "create" for e in events), events
    finally:
        await sb.kill()


@pytest.mark.asyncio
async def test_async_code_interpreter(server):
    from e2b_code_interpreter import AsyncSandbox as AsyncInterp

    sb = await AsyncInterp.create(timeout=120)
    try:
        await sb.run_code("n = 10")
        ex = await sb.run_code("n * 3")
        assert ex.text == "30"
    finally:
        await sb.kill()
