"""Interactive terminals: the client side of the ``GET /v1/sandboxes/{id}/pty`` WebSocket.

``Terminal`` (on ``websockets.sync``) and ``AsyncTerminal`` (on ``websockets.asyncio``) share
the wire protocol here: binary messages are keystrokes and output; text messages are JSON
control, ``resize`` from the client and ``exit`` (with the exit code) from the server, after
which the server closes the socket. A refused upgrade (no such sandbox, bad token, bad size)
is the server's JSON error, raised as the SDK's usual exception (``NotFoundError``...).
"""

from __future__ import annotations

import asyncio
import builtins
import json
import time
from types import TracebackType
from typing import Any, AsyncIterator, Dict, Generator, Iterator, List, Optional, Tuple, Type, Union
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection as _AsyncConnection
from websockets.asyncio.client import connect as _async_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection as _SyncConnection
from websockets.sync.client import connect as _sync_connect

from . import _api
from .errors import ConnectionError, SandpitError, TimeoutError, from_body

Data = Union[bytes, str]

#: The builtin, apart from the SDK's own ``TimeoutError`` (which subclasses it); asyncio's
#: is a different class before Python 3.11.
_TIMEOUTS = (builtins.TimeoutError, asyncio.TimeoutError)

#: Output messages can be large (a full screen redraw); no cap beyond the server's own.
_MAX_MESSAGE = 16 << 20


def _url(settings: _api.Settings, sid: str, cols: int, rows: int, command: Optional[str]) -> str:
    base = settings.base_url
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    query: Dict[str, Any] = {"cols": cols, "rows": rows}
    if command is not None:
        query["command"] = command
    return f"{base}{_api.sb_path(sid)}/pty?{urlencode(query)}"


def _headers(settings: _api.Settings) -> Tuple[List[Tuple[str, str]], Optional[str]]:
    """The SDK's headers (``Authorization`` and any extra ones) and its User-Agent apart,
    since websockets sends its own User-Agent header."""
    extra = [(k, v) for k, v in settings.headers.items() if k.lower() != "user-agent"]
    agent = next((v for k, v in settings.headers.items() if k.lower() == "user-agent"), None)
    return extra, agent


def _check_size(cols: int, rows: int) -> None:
    for name, n in (("cols", cols), ("rows", rows)):
        if not isinstance(n, int) or not 0 < n < 65536:
            raise ValueError(f"{name} must be an integer in 1-65535, not {n!r}")


def _connect_error(url: str, e: Exception) -> SandpitError:
    if isinstance(e, InvalidStatus):
        return from_body(e.response.status_code, bytes(e.response.body or b""), e.response.headers.get("retry-after"))
    if isinstance(e, (OSError, InvalidHandshake)):
        return ConnectionError(f"GET {url}: {e or type(e).__name__}", "connection_error")
    return SandpitError(f"GET {url}: {e}", "websocket_error")


def _keys(data: Data) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def _resize_message(cols: int, rows: int) -> str:
    _check_size(cols, rows)
    return json.dumps({"type": "resize", "cols": cols, "rows": rows})


def _exit_code(text: str) -> Optional[int]:
    """The exit code of a server control message, None for anything else."""
    try:
        msg = json.loads(text)
    except ValueError:
        return None
    if isinstance(msg, dict) and msg.get("type") == "exit":
        code = msg.get("exit_code")
        return int(code) if isinstance(code, int) else -1
    return None


class _Buffer:
    """Output read ahead by ``read_until``, handed out before new messages."""

    def __init__(self) -> None:
        self.pending = bytearray()

    def take_until(self, needle: bytes) -> Optional[bytes]:
        at = self.pending.find(needle)
        if at < 0:
            return None
        end = at + len(needle)
        out = bytes(self.pending[:end])
        del self.pending[:end]
        return out

    def take_all(self) -> Optional[bytes]:
        if not self.pending:
            return None
        out = bytes(self.pending)
        self.pending.clear()
        return out


def _closed_before(needle: bytes, seen: bytes) -> SandpitError:
    tail = seen[-200:].decode("utf-8", "replace")
    return SandpitError(f"the terminal ended before {needle!r} showed; last output: {tail!r}", "terminal_closed")


class Terminal:
    """An open terminal (``sb.terminal()``). Use it as a context manager, or ``close()`` it
    (which hangs the terminal up).

    ``send`` types, ``resize`` changes the window, ``recv`` returns the next output chunk
    (``None`` once the program has exited: ``exit_code`` is then set), ``read_until`` reads
    up to a marker, ``wait`` reads to the end and returns the exit code. Iterating yields the
    output chunks until the end.
    """

    def __init__(self, ws: _SyncConnection) -> None:
        self._ws = ws
        self._buf = _Buffer()
        self._done = False
        #: The program's exit code, once it has exited (``None`` until then).
        self.exit_code: Optional[int] = None

    @classmethod
    def open(
        cls, settings: _api.Settings, sid: str, cols: int, rows: int, command: Optional[str], timeout: float
    ) -> Terminal:
        _check_size(cols, rows)
        url = _url(settings, sid, cols, rows, command)
        headers, agent = _headers(settings)
        try:
            # Entered at once (websockets >= 17.1 warns about a connection used outside a
            # ``with``); ``close()`` ends it.
            ws = _sync_connect(
                url,
                additional_headers=headers,
                user_agent_header=agent,
                open_timeout=timeout,
                max_size=_MAX_MESSAGE,
                compression=None,
            ).__enter__()
        except _TIMEOUTS as e:
            raise TimeoutError(f"GET {url}: the WebSocket did not open in {timeout} s", "client_timeout") from e
        except Exception as e:  # every failure becomes an SDK error
            raise _connect_error(url, e) from e
        return cls(ws)

    @property
    def closed(self) -> bool:
        """True once the program exited or the socket closed."""
        return self._done

    def _check_open(self) -> None:
        if self._done:
            raise SandpitError("the terminal is closed", "terminal_closed")

    def send(self, data: Data) -> None:
        """Type ``data`` (str is sent as UTF-8); ``terminal_closed`` once the program exited."""
        self._check_open()
        try:
            self._ws.send(_keys(data))
        except ConnectionClosed as e:
            raise SandpitError("the terminal is closed", "terminal_closed") from e

    def resize(self, cols: int, rows: int) -> None:
        """Change the terminal's size (the program gets SIGWINCH)."""
        self._check_open()
        try:
            self._ws.send(_resize_message(cols, rows))
        except ConnectionClosed as e:
            raise SandpitError("the terminal is closed", "terminal_closed") from e

    def recv(self, timeout: Optional[float] = None) -> Optional[bytes]:
        """The next output chunk; ``None`` at the end (``exit_code`` is then set unless the
        socket closed without one). ``TimeoutError`` if nothing comes in ``timeout`` s."""
        pending = self._buf.take_all()
        if pending is not None:
            return pending
        return self._next(timeout)

    def _next(self, timeout: Optional[float]) -> Optional[bytes]:
        """The next output message off the socket, past the buffer."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._done:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                msg = self._ws.recv(timeout=left)
            except _TIMEOUTS as e:
                raise TimeoutError(f"no terminal output in {timeout} s", "client_timeout") from e
            except ConnectionClosed:
                self._done = True
                break
            if isinstance(msg, bytes):
                return msg
            code = _exit_code(msg)
            if code is not None:
                self.exit_code = code
                self._done = True
        return None

    def __iter__(self) -> Iterator[bytes]:
        while True:
            chunk = self.recv()
            if chunk is None:
                return
            yield chunk

    def read_until(self, needle: Data, timeout: Optional[float] = None) -> bytes:
        """Output up to and including ``needle``; what came after it is kept for the next
        read. ``TimeoutError`` after ``timeout`` s, ``SandpitError`` (``terminal_closed``) if
        the terminal ends first."""
        want = _keys(needle)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            got = self._buf.take_until(want)
            if got is not None:
                return got
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            chunk = self._next(left)
            if chunk is None:
                raise _closed_before(want, bytes(self._buf.pending))
            self._buf.pending += chunk

    def read_all(self, timeout: Optional[float] = None) -> bytes:
        """Every output chunk until the program exits."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out = bytearray()
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            chunk = self.recv(timeout=left)
            if chunk is None:
                return bytes(out)
            out += chunk

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """Read (and drop) the output until the program exits; its exit code (``None`` if
        the socket closed without one)."""
        self.read_all(timeout)
        return self.exit_code

    def close(self) -> None:
        """Close the socket: the server hangs the terminal up (SIGHUP)."""
        self._done = True
        self._ws.close()

    def __enter__(self) -> Terminal:
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()


class AsyncTerminal:
    """The asyncio ``Terminal`` (``await sb.terminal()`` or ``async with sb.terminal() as t``):
    the same methods, awaited; ``async for chunk in t`` yields the output."""

    def __init__(self, ws: _AsyncConnection) -> None:
        self._ws = ws
        self._buf = _Buffer()
        self._done = False
        #: The program's exit code, once it has exited (``None`` until then).
        self.exit_code: Optional[int] = None

    @classmethod
    async def open(
        cls, settings: _api.Settings, sid: str, cols: int, rows: int, command: Optional[str], timeout: float
    ) -> AsyncTerminal:
        _check_size(cols, rows)
        url = _url(settings, sid, cols, rows, command)
        headers, agent = _headers(settings)
        try:
            ws = await _async_connect(
                url,
                additional_headers=headers,
                user_agent_header=agent,
                open_timeout=timeout,
                max_size=_MAX_MESSAGE,
                compression=None,
            )
        except _TIMEOUTS as e:
            raise TimeoutError(f"GET {url}: the WebSocket did not open in {timeout} s", "client_timeout") from e
        except Exception as e:  # every failure becomes an SDK error
            raise _connect_error(url, e) from e
        return cls(ws)

    @property
    def closed(self) -> bool:
        """True once the program exited or the socket closed."""
        return self._done

    def _check_open(self) -> None:
        if self._done:
            raise SandpitError("the terminal is closed", "terminal_closed")

    async def send(self, data: Data) -> None:
        """Type ``data`` (str is sent as UTF-8); ``terminal_closed`` once the program exited."""
        self._check_open()
        try:
            await self._ws.send(_keys(data))
        except ConnectionClosed as e:
            raise SandpitError("the terminal is closed", "terminal_closed") from e

    async def resize(self, cols: int, rows: int) -> None:
        """Change the terminal's size (the program gets SIGWINCH)."""
        self._check_open()
        try:
            await self._ws.send(_resize_message(cols, rows))
        except ConnectionClosed as e:
            raise SandpitError("the terminal is closed", "terminal_closed") from e

    async def recv(self, timeout: Optional[float] = None) -> Optional[bytes]:
        """The next output chunk; ``None`` at the end (``exit_code`` is then set)."""
        pending = self._buf.take_all()
        if pending is not None:
            return pending
        return await self._next(timeout)

    async def _next(self, timeout: Optional[float]) -> Optional[bytes]:
        """The next output message off the socket, past the buffer."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._done:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                msg = await asyncio.wait_for(self._ws.recv(), left)
            except _TIMEOUTS as e:
                raise TimeoutError(f"no terminal output in {timeout} s", "client_timeout") from e
            except ConnectionClosed:
                self._done = True
                break
            if isinstance(msg, bytes):
                return msg
            code = _exit_code(msg)
            if code is not None:
                self.exit_code = code
                self._done = True
        return None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self.recv()
            if chunk is None:
                return
            yield chunk

    async def read_until(self, needle: Data, timeout: Optional[float] = None) -> bytes:
        """Output up to and including ``needle`` (see ``Terminal.read_until``)."""
        want = _keys(needle)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            got = self._buf.take_until(want)
            if got is not None:
                return got
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            chunk = await self._next(left)
            if chunk is None:
                raise _closed_before(want, bytes(self._buf.pending))
            self._buf.pending += chunk

    async def read_all(self, timeout: Optional[float] = None) -> bytes:
        """Every output chunk until the program exits."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out = bytearray()
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            chunk = await self.recv(timeout=left)
            if chunk is None:
                return bytes(out)
            out += chunk

    async def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """Read (and drop) the output until the program exits; its exit code."""
        await self.read_all(timeout)
        return self.exit_code

    async def close(self) -> None:
        """Close the socket: the server hangs the terminal up (SIGHUP)."""
        self._done = True
        await self._ws.close()

    async def __aenter__(self) -> AsyncTerminal:
        return self

    async def __aexit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.close()


class TerminalOpening:
    """``sb.terminal(...)`` in the async client: awaitable, and an async context manager."""

    def __init__(
        self, settings: _api.Settings, sid: str, cols: int, rows: int, command: Optional[str], timeout: float
    ) -> None:
        self._args = (settings, sid, cols, rows, command, timeout)
        self._term: Optional[AsyncTerminal] = None

    def __await__(self) -> Generator[Any, None, AsyncTerminal]:
        return AsyncTerminal.open(*self._args).__await__()

    async def __aenter__(self) -> AsyncTerminal:
        self._term = await AsyncTerminal.open(*self._args)
        return self._term

    async def __aexit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if self._term is not None:
            await self._term.close()

