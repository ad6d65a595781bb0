"""Terminals (the ``/pty`` WebSocket) through the sync and asyncio SDK, against the real server."""

from __future__ import annotations

import re

import pytest

import sandpit
from sandpit import AsyncClient, Client, Sandbox

from .conftest import Server

# Bounds for a hung server, not performance checks.
WAIT = 60.0


def test_a_command_in_a_terminal_prints_and_exits_with_its_code(sandbox: Sandbox) -> None:
    with sandbox.terminal(command="echo hi; exit 3") as term:
        out = term.read_all(timeout=WAIT)
        assert term.closed
        assert term.exit_code == 3
    assert b"hi" in out, out


def test_typed_input_runs_in_the_shell_and_its_exit_code_shows(sandbox: Sandbox) -> None:
    with sandbox.terminal() as term:
        assert term.exit_code is None and not term.closed
        # The sum is computed by the sandbox's bash: the echo of the typed line cannot show it.
        term.send("echo $((40+2))hi; exit 3\n")
        term.read_until("42hi", timeout=WAIT)
        assert term.wait(timeout=WAIT) == 3
        assert term.exit_code == 3
        # Nothing more comes once it exited; typing then is an error with a code.
        assert term.recv(timeout=WAIT) is None
        with pytest.raises(sandpit.SandpitError) as e:
            term.send("echo late\n")
        assert e.value.code == "terminal_closed"


def test_resize_changes_stty_size(sandbox: Sandbox) -> None:
    with sandbox.terminal(cols=100, rows=30) as term:
        term.send(b"echo S$((1+1)); stty size\n")
        term.read_until("S2", timeout=WAIT)
        assert b"30 100" in term.read_until("30 100", timeout=WAIT)
        term.resize(120, 40)
        # Resize and keystrokes travel in order on the one socket.
        term.send("echo R$((2+3)); stty size; echo E$((3+4))\n")
        seen = term.read_until("E7", timeout=WAIT)
        assert re.search(rb"R5\r?\n40 120\r?\n", seen), seen
        term.send("exit\n")
        assert term.wait(timeout=WAIT) == 0


def test_a_read_timeout_keeps_the_output_and_the_terminal(sandbox: Sandbox) -> None:
    with sandbox.terminal() as term:
        term.send("echo $((5+5))Q\n")
        term.read_until("10Q", timeout=WAIT)
        term.send("echo $((6+6))R\n")
        # Never printed: the wait ends in a TimeoutError, and what came meanwhile stays.
        with pytest.raises(sandpit.TimeoutError) as e:
            term.read_until("never printed", timeout=1.0)
        assert e.value.code == "client_timeout"
        term.read_until("12R", timeout=WAIT)
        term.send("exit 9\n")
        assert term.wait(timeout=WAIT) == 9


def test_a_missing_sandbox_raises_not_found(client: Client) -> None:
    sb = client.create()
    sb.delete()
    with pytest.raises(sandpit.NotFoundError) as e:
        sb.terminal()
    assert e.value.status == 404
    assert e.value.code == "not_found"
    assert sb.id in e.value.message


def test_a_bad_size_is_refused_before_connecting(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError):
        sandbox.terminal(cols=0)
    with pytest.raises(ValueError):
        sandbox.terminal(rows=70000)


def test_terminals_send_the_token(auth_server: Server) -> None:
    with auth_server.client() as c, c.create() as sb:
        with sb.terminal(command="echo ok$((1+1)); exit 7") as term:
            assert b"ok2" in term.read_all(timeout=WAIT)
            assert term.exit_code == 7
        with Client(auth_server.url, "wrong-token") as bad:
            from sandpit.client import Sandbox as SyncSandbox

            stranger = SyncSandbox(bad, sb.info)
            with pytest.raises(sandpit.AuthError) as e:
                stranger.terminal()
            assert e.value.status == 401


async def test_async_terminal_echo_exit_and_resize(server: Server) -> None:
    async with AsyncClient(server.url) as c, c.create() as sb:
        async with sb.terminal(cols=90, rows=20) as term:
            await term.send("echo A$((1+1)); stty size\n")
            await term.read_until("A2", timeout=WAIT)
            await term.read_until("20 90", timeout=WAIT)
            await term.resize(132, 43)
            await term.send("echo B$((2+2)); stty size; echo hi; exit 3\n")
            await term.read_until("B4", timeout=WAIT)
            await term.read_until("43 132", timeout=WAIT)
            rest = await term.read_all(timeout=WAIT)
            assert b"hi" in rest
            assert term.exit_code == 3
        # Awaited rather than entered: the same terminal, closed by hand.
        term2 = await sb.terminal(command="echo x$((3+4)); exit 5")
        chunks = [chunk async for chunk in term2]
        assert b"x7" in b"".join(chunks)
        assert term2.exit_code == 5
        await term2.close()


async def test_async_terminal_of_a_missing_sandbox_raises_not_found(server: Server) -> None:
    async with AsyncClient(server.url) as c:
        sb = await c.create()
        await sb.delete()
        with pytest.raises(sandpit.NotFoundError):
            await sb.terminal()
        with pytest.raises(sandpit.NotFoundError):
            async with sb.terminal():
                pass
