"""The synchronous SDK: ``Client`` (one connection pool), the ``Sandbox`` facade with its
lazy default ``Session``, and the handles for files, processes and code contexts.

Requests are built by ``_api`` (shared with the asyncio client in ``aio``); this module only
sends them with ``httpx.Client`` and turns answers into models and errors.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from types import TracebackType
from typing import IO, Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Type, Union, cast

import httpx

from . import _api
from ._api import UNSET, Call, Command
from .errors import ConnectionError, NotFoundError, SandpitError, TimeoutError, from_body, from_event
from .models import (
    CodeEvent,
    ContextInfo,
    ExecEvent,
    ExecResult,
    Execution,
    ExitEvent,
    FileEntry,
    GitResult,
    Limits,
    LogEvent,
    PortReady,
    ProcessInfo,
    PortToken,
    ProcessLogs,
    ResultEvent,
    SandboxInfo,
    SessionInfo,
    SnapshotInfo,
    StderrEvent,
    StdoutEvent,
    TenantInfo,
    parse_event,
)
from .terminal import Terminal

PathLike = Union[str, "os.PathLike[str]"]
CHUNK = 1 << 20


class _Transport:
    """Sends ``Call``s over one ``httpx.Client``: retries connection errors of idempotent
    calls, and maps failures to the SDK's errors."""

    def __init__(self, settings: _api.Settings, http: Optional[httpx.Client]) -> None:
        self.settings = settings
        self._own = http is None
        self.http = http or httpx.Client(
            timeout=httpx.Timeout(settings.timeout, connect=min(10.0, settings.timeout)),
        )

    def _timeout(self, call: Call) -> Any:
        if call.timeout is UNSET:
            return httpx.USE_CLIENT_DEFAULT
        return httpx.Timeout(self.settings.timeout, connect=10.0, read=call.timeout)

    def _request(self, call: Call) -> httpx.Request:
        return self.http.build_request(
            call.method,
            self.settings.base_url + call.path,
            params=call.params,
            json=call.json,
            content=call.content,
            headers={**self.settings.headers, **call.headers},
            timeout=self._timeout(call),
        )

    def _send(self, call: Call, stream: bool) -> httpx.Response:
        attempt = 0
        while True:
            try:
                return self.http.send(self._request(call), stream=stream)
            except httpx.TimeoutException as e:
                if isinstance(e, httpx.ConnectTimeout) and call.idempotent and attempt < self.settings.retries:
                    pass
                else:
                    raise TimeoutError(f"{call.method} {call.path}: {e or type(e).__name__}", "client_timeout") from e
            except httpx.TransportError as e:
                if not (call.idempotent and attempt < self.settings.retries):
                    raise ConnectionError(
                        f"{call.method} {self.settings.base_url}{call.path}: {e or type(e).__name__}",
                        "connection_error",
                    ) from e
            time.sleep(0.1 * 2**attempt)
            attempt += 1

    def send(self, call: Call) -> httpx.Response:
        resp = self._send(call, stream=False)
        if resp.status_code >= 400:
            raise from_body(resp.status_code, resp.content, resp.headers.get("retry-after"))
        return resp

    def json(self, call: Call) -> Any:
        resp = self.send(call)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as e:
            raise SandpitError(
                f"{call.method} {call.path}: the answer is not JSON: {resp.text[:200]!r}",
                "invalid_response",
                resp.status_code,
            ) from e

    @contextmanager
    def stream(self, call: Call) -> Iterator[httpx.Response]:
        resp = self._send(call, stream=True)
        try:
            if resp.status_code >= 400:
                raise from_body(resp.status_code, resp.read(), resp.headers.get("retry-after"))
            yield resp
        except httpx.TimeoutException as e:
            raise TimeoutError(f"{call.method} {call.path}: read timed out", "client_timeout") from e
        except httpx.TransportError as e:
            raise ConnectionError(f"{call.method} {call.path}: {e}", "connection_error") from e
        finally:
            resp.close()

    def events(self, call: Call) -> Iterator[Any]:
        """Typed events of an SSE call; an ``error`` event is raised as ``SandpitError``."""
        decoder = _api.SSEDecoder()
        with self.stream(call.sse()) as resp:
            for line in resp.iter_lines():
                got = decoder.feed(line)
                if got is None:
                    continue
                name, data = got
                if name == "error":
                    raise from_event(data)
                event = parse_event(name, data)
                if event is not None:
                    yield event
            last = decoder.flush()
            if last is not None:
                event = parse_event(*last)
                if event is not None:
                    yield event

    def close(self) -> None:
        if self._own:
            self.http.close()


class Client:
    """Entry point: one connection pool to a sandpit server.

    ``base_url`` defaults to ``$SANDPIT_URL`` or ``http://127.0.0.1:8787``; ``token`` to
    ``$SANDPIT_AUTH_TOKEN``. ``timeout`` is the default per-call timeout in seconds (calls that
    wait on the server, such as exec with ``timeout_ms``, wait that long plus a margin).
    ``retries`` is how often an idempotent call (GET, PUT, DELETE) is resent after a
    connection error. Pass ``http`` to bring your own ``httpx.Client``.
    """

    def __init__(
        self,
        base_url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        timeout: float = _api.DEFAULT_TIMEOUT,
        retries: int = 2,
        headers: Optional[Mapping[str, str]] = None,
        http: Optional[httpx.Client] = None,
    ) -> None:
        self._t = _Transport(_api.Settings.resolve(base_url, token, timeout, retries, headers), http)

    @property
    def base_url(self) -> str:
        return self._t.settings.base_url

    def health(self) -> Dict[str, Any]:
        """``GET /health`` (no auth): ``{"status": "ok", "version": ...}``."""
        return cast(Dict[str, Any], self._t.json(_api.health()))

    def create(
        self,
        id: Optional[str] = None,
        *,
        keepalive_seconds: Optional[int] = None,
        env: Optional[Mapping[str, str]] = None,
        limits: Union[Limits, Mapping[str, Any], None] = None,
        network: Optional[str] = None,
        allow: Optional[Sequence[str]] = None,
        restore: Union[str, Mapping[str, Any], None] = None,
        sleep_after_seconds: Optional[int] = None,
        snapshot_on_expiry: Optional[bool] = None,
    ) -> Sandbox:
        """Create a sandbox. Use it as ``with client.create() as sb:`` to delete it on exit.

        ``network`` (``"none"``/``"egress"``), ``allow``, ``restore`` (``"latest"``, a snapshot
        id, or ``{"snapshot", "from_sandbox"}``), ``sleep_after_seconds`` and
        ``snapshot_on_expiry`` are sent only when given (servers with networking/snapshots)."""
        extra = _api.create_extra(network, allow, restore, sleep_after_seconds, snapshot_on_expiry)
        call = _api.create_sandbox(id, keepalive_seconds, env, limits, extra)
        return Sandbox(self, SandboxInfo.from_json(self._t.json(call)))

    def get(self, id: str) -> Sandbox:
        """A handle on an existing sandbox (``NotFoundError`` if there is none)."""
        return Sandbox(self, SandboxInfo.from_json(self._t.json(_api.get_sandbox(id))))

    def list(self) -> List[Sandbox]:
        """Every sandbox on the server."""
        payload = self._t.json(_api.list_sandboxes())
        return [Sandbox(self, SandboxInfo.from_json(d)) for d in _api.items(payload, "sandboxes")]

    def delete(self, id: str) -> None:
        """Delete a sandbox by id."""
        self._t.send(_api.delete_sandbox(id))

    def delete_snapshot(self, snapshot_id: str) -> None:
        """``DELETE /v1/snapshots/{sid}``."""
        self._t.send(_api.delete_snapshot(snapshot_id))

    def get_snapshot(self, snapshot_id: str) -> SnapshotInfo:
        """``GET /v1/snapshots/{sid}`` (snapshots outlive their sandbox)."""
        return SnapshotInfo.from_json(self._t.json(_api.get_snapshot(snapshot_id)))

    def tenant(self) -> TenantInfo:
        """``GET /v1/tenant``: the caller's tenant, quotas, usage and the server's caps."""
        return TenantInfo.from_json(self._t.json(_api.tenant()))

    def close(self) -> None:
        """Close the connection pool (not the sandboxes)."""
        self._t.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()


class Sandbox:
    """One sandbox. ``info`` is its last known state (``refresh()`` reloads it).

    ``exec`` runs each command in a fresh process; ``session`` (the lazy default session,
    id ``"default"``) and ``sessions`` keep ``cd``/``export`` between commands.
    As a context manager it deletes the sandbox on exit.
    """

    def __init__(self, client: Client, info: SandboxInfo) -> None:
        self.client = client
        self.info = info
        self.id = info.id
        self._t = client._t
        self.files = Files(self)
        self.sessions = Sessions(self)
        self.processes = Processes(self)
        self.contexts = Contexts(self)
        self.snapshots = Snapshots(self)
        self.ports = Ports(self)
        self._session: Optional[Session] = None

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r}, status={self.info.status!r})"

    @property
    def status(self) -> str:
        return self.info.status

    @property
    def session(self) -> Session:
        """The default session (``"default"``), created on the server on first use."""
        if self._session is None:
            self._session = Session(self, "default")
        return self._session

    # lifecycle

    def refresh(self) -> SandboxInfo:
        """Reload ``info`` from the server (counts as activity)."""
        self.info = SandboxInfo.from_json(self._t.json(_api.get_sandbox(self.id)))
        return self.info

    def keepalive(self) -> SandboxInfo:
        """Push the expiry out by ``keepalive_seconds`` from now."""
        self.info = SandboxInfo.from_json(self._t.json(_api.keepalive(self.id)))
        return self.info

    def set_keepalive(self, keepalive_seconds: int) -> SandboxInfo:
        """Change ``keepalive_seconds`` (0 = never expire); the expiry is recomputed from now."""
        return self.update(keepalive_seconds=keepalive_seconds)

    def update(
        self,
        *,
        keepalive_seconds: Optional[int] = None,
        sleep_after_seconds: Optional[int] = None,
        snapshot_on_expiry: Optional[bool] = None,
        limits: Union[Limits, Mapping[str, Any], None] = None,
    ) -> SandboxInfo:
        """``PATCH`` the given settings. ``limits`` change while the sandbox runs (memory,
        cpus, pids, open files; fields left ``None`` keep their value); a memory limit below
        what the sandbox uses now is refused (``ConflictError``) rather than killing it."""
        fields = {
            "keepalive_seconds": keepalive_seconds,
            "sleep_after_seconds": sleep_after_seconds,
            "snapshot_on_expiry": snapshot_on_expiry,
            "limits": _api.limits_json(limits),
        }
        self.info = SandboxInfo.from_json(self._t.json(_api.update_sandbox(self.id, fields)))
        return self.info

    def delete(self) -> None:
        """Delete the sandbox and everything in it."""
        self._t.send(_api.delete_sandbox(self.id))

    def sleep(self) -> SandboxInfo:
        """Put the sandbox to sleep (``POST .../sleep``)."""
        return self._lifecycle(_api.sleep(self.id))

    def wake(self) -> SandboxInfo:
        """Wake a sleeping sandbox (``POST .../wake``)."""
        return self._lifecycle(_api.wake(self.id))

    def _lifecycle(self, call: Call) -> SandboxInfo:
        payload = self._t.json(call)
        if isinstance(payload, dict) and "id" in payload and "status" in payload:
            self.info = SandboxInfo.from_json(payload)
            return self.info
        # No body: read the state from the list, which (unlike GET) is not activity and so
        # cannot wake the sandbox it describes.
        for d in _api.items(self._t.json(_api.list_sandboxes()), "sandboxes"):
            if d.get("id") == self.id:
                self.info = SandboxInfo.from_json(d)
                return self.info
        return self.refresh()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        try:
            self.delete()
        except NotFoundError:
            pass

    # commands

    def exec(
        self,
        command: Command,
        *,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        stdin: Optional[str] = None,
        timeout_ms: Optional[int] = None,
        session: Union[str, Session, None] = None,
        on_stdout: Optional[Callable[[str], Any]] = None,
        on_stderr: Optional[Callable[[str], Any]] = None,
    ) -> ExecResult:
        """Run a command (shell text, or an argv list run without a shell) and wait for it.

        With ``on_stdout``/``on_stderr`` the output is streamed and each callback gets every
        line (without its newline) as it is printed; the result still holds all of it. An
        exception from a callback ends the stream and kills the command."""
        sid = session.id if isinstance(session, Session) else session
        if on_stdout is None and on_stderr is None:
            call = _api.exec_(self.id, command, cwd, env, stdin, timeout_ms, sid, None)
            return ExecResult.from_json(self._t.json(call))
        call = _api.exec_(self.id, command, cwd, env, stdin, timeout_ms, sid, True)
        out, err = _api.LineSplitter(), _api.LineSplitter()
        for event in self._t.events(call):
            if isinstance(event, StdoutEvent):
                for line in out.feed(event.data):
                    if on_stdout is not None:
                        on_stdout(line)
            elif isinstance(event, StderrEvent):
                for line in err.feed(event.data):
                    if on_stderr is not None:
                        on_stderr(line)
            elif isinstance(event, ExitEvent):
                for splitter, callback in ((out, on_stdout), (err, on_stderr)):
                    rest = splitter.rest()
                    if rest is not None and callback is not None:
                        callback(rest)
                return _api.streamed_result(out, err, event)
        raise SandpitError("the command's stream ended without an exit event", "stream_error")

    def stream(
        self,
        command: Command,
        *,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        stdin: Optional[str] = None,
        timeout_ms: Optional[int] = None,
        session: Union[str, Session, None] = None,
        kill_on_disconnect: Optional[bool] = None,
    ) -> Iterator[ExecEvent]:
        """Run a command and yield its events as they happen: ``StartEvent``, ``StdoutEvent``,
        ``StderrEvent`` and finally ``ExitEvent``. The request is sent when iteration starts;
        leaving the loop early closes the stream (the command keeps running unless
        ``kill_on_disconnect``)."""
        sid = session.id if isinstance(session, Session) else session
        call = _api.exec_(self.id, command, cwd, env, stdin, timeout_ms, sid, kill_on_disconnect)
        return cast(Iterator[ExecEvent], self._t.events(call))

    # code interpreter

    def run_code(
        self,
        code: str,
        language: str = "python",
        context: Union[str, CodeContext, None] = None,
        *,
        timeout_ms: Optional[int] = None,
        locals: bool = False,
    ) -> Execution:
        """Run code in a stateful interpreter (the sandbox's default context of ``language``,
        or ``context``) and return its output and rich results."""
        cid = context.id if isinstance(context, CodeContext) else context
        lang = None if cid is not None else language
        return Execution.from_json(self._t.json(_api.run_code(self.id, code, lang, cid, timeout_ms, locals)))

    def stream_code(
        self,
        code: str,
        language: str = "python",
        context: Union[str, CodeContext, None] = None,
        *,
        timeout_ms: Optional[int] = None,
    ) -> Iterator[CodeEvent]:
        """Like ``run_code``, yielding ``StdoutEvent``/``StderrEvent`` as output is produced and
        a final ``ResultEvent``."""
        cid = context.id if isinstance(context, CodeContext) else context
        lang = None if cid is not None else language
        return cast(Iterator[CodeEvent], self._t.events(_api.run_code(self.id, code, lang, cid, timeout_ms, False)))

    # terminals

    def terminal(self, cols: int = 80, rows: int = 24, command: Optional[str] = None) -> Terminal:
        """Open an interactive terminal (bash, or ``command`` run by bash) over the
        ``/pty`` WebSocket, with the client's token. ``with sb.terminal() as t:`` hangs it
        up on exit; ``t.send``, ``t.recv``, ``t.read_until``, ``t.resize``, ``t.wait`` (the
        exit code), ``t.exit_code``. ``NotFoundError`` if the sandbox does not exist."""
        return Terminal.open(self._t.settings, self.id, cols, rows, command, self._t.settings.timeout)

    # snapshots and git

    def restore(
        self, snapshot: Union[str, SnapshotInfo, None] = None, *, from_sandbox: Optional[str] = None
    ) -> SnapshotInfo:
        """Replace the files under the snapshot's path with its contents; ``snapshot`` is an id
        or ``"latest"`` (the default: the newest of ``from_sandbox``, default this sandbox).
        Answers the snapshot restored."""
        sid = snapshot.id if isinstance(snapshot, SnapshotInfo) else snapshot
        return SnapshotInfo.from_json(self._t.json(_api.restore(self.id, sid, from_sandbox)))

    def git_clone(
        self,
        url: str,
        *,
        branch: Optional[str] = None,
        depth: Optional[int] = None,
        dir: Optional[str] = None,
        token: Optional[str] = None,
        username: Optional[str] = None,
        timeout_ms: Optional[int] = None,
    ) -> GitResult:
        """Clone ``url`` into ``dir`` (default ``/workspace/<name>``), or fast-forward it when
        ``dir`` already holds the repository. git runs inside the sandbox, so the URL must be
        reachable from there; ``token`` never shows in argv, ``.git/config`` or logs."""
        fields = {
            "branch": branch,
            "depth": depth,
            "dir": dir,
            "token": token,
            "username": username,
            "timeout_ms": timeout_ms,
        }
        return GitResult.from_json(self._t.json(_api.git_clone(self.id, url, fields)))


class Files:
    """Files of one sandbox: absolute paths; contents stream in both directions."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox
        self._t = sandbox._t

    def read(self, path: str) -> bytes:
        return self._t.send(_api.read_file(self._sb.id, path)).content

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return self.read(path).decode(encoding)

    def write(self, path: str, data: Union[bytes, str]) -> None:
        """Replace (or create, with parents) a file with ``data``."""
        content = data.encode() if isinstance(data, str) else bytes(data)
        self._t.send(_api.write_file(self._sb.id, path, content))

    def write_text(self, path: str, text: str, encoding: str = "utf-8") -> None:
        self.write(path, text.encode(encoding))

    def upload(self, path: str, source: Union[PathLike, IO[bytes]], chunk_size: int = CHUNK) -> None:
        """Stream a local file (a path or a binary file object) to ``path``, without loading it
        into memory. The server replaces the file only once the upload completes."""
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                self._t.send(_api.write_file(self._sb.id, path, _chunks(f, chunk_size)))
        else:
            self._t.send(_api.write_file(self._sb.id, path, _chunks(source, chunk_size)))

    def iter_read(self, path: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """Yield the file's contents in chunks as they arrive."""
        with self._t.stream(_api.read_file(self._sb.id, path)) as resp:
            yield from resp.iter_bytes(chunk_size)

    def download(self, path: str, dest: Union[PathLike, IO[bytes]], chunk_size: int = CHUNK) -> int:
        """Stream ``path`` into a local file (a path or a binary file object); returns the byte
        count. A local path is written only once the download has started successfully."""
        total = 0
        with self._t.stream(_api.read_file(self._sb.id, path)) as resp:
            if isinstance(dest, (str, os.PathLike)):
                with open(dest, "wb") as f:
                    for chunk in resp.iter_bytes(chunk_size):
                        f.write(chunk)
                        total += len(chunk)
            else:
                for chunk in resp.iter_bytes(chunk_size):
                    dest.write(chunk)
                    total += len(chunk)
        return total

    def list(self, path: str = "/workspace") -> List[FileEntry]:
        """Entries of a directory, sorted by name."""
        return [FileEntry.from_json(e) for e in _api.items(self._t.json(_api.list_files(self._sb.id, path)), "entries")]

    def stat(self, path: str) -> FileEntry:
        return FileEntry.from_json(self._t.json(_api.stat_file(self._sb.id, path)))

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except NotFoundError:
            return False
        return True

    def mkdir(self, path: str, parents: bool = True) -> None:
        self._t.send(_api.mkdir(self._sb.id, path, parents))

    def remove(self, path: str, recursive: bool = False) -> None:
        """Remove a file, or a directory (non-empty ones need ``recursive``)."""
        self._t.send(_api.remove_file(self._sb.id, path, recursive))

    def move(self, src: str, dst: str) -> None:
        self._t.send(_api.move(self._sb.id, src, dst))


def _chunks(f: IO[bytes], size: int) -> Iterator[bytes]:
    while True:
        chunk = f.read(size)
        if not chunk:
            return
        yield chunk


class Sessions:
    """Long-lived shells of one sandbox."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox
        self._t = sandbox._t

    def create(
        self, id: Optional[str] = None, *, cwd: Optional[str] = None, env: Optional[Mapping[str, str]] = None
    ) -> Session:
        info = SessionInfo.from_json(self._t.json(_api.create_session(self._sb.id, id, cwd, env)))
        return Session(self._sb, info.id, info)

    def list(self) -> List[Session]:
        payload = self._t.json(_api.list_sessions(self._sb.id))
        return [Session(self._sb, i.id, i) for i in map(SessionInfo.from_json, _api.items(payload, "sessions"))]

    def get(self, id: str) -> Session:
        info = SessionInfo.from_json(self._t.json(_api.get_session(self._sb.id, id)))
        return Session(self._sb, info.id, info)


class Session:
    """A shell whose ``cd``, ``export``, variables and functions persist between commands."""

    def __init__(self, sandbox: Sandbox, id: str, info: Optional[SessionInfo] = None) -> None:
        self.sandbox = sandbox
        self.id = id
        self.info = info

    def __repr__(self) -> str:
        return f"Session(sandbox={self.sandbox.id!r}, id={self.id!r})"

    def exec(
        self,
        command: Command,
        *,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        stdin: Optional[str] = None,
        timeout_ms: Optional[int] = None,
        on_stdout: Optional[Callable[[str], Any]] = None,
        on_stderr: Optional[Callable[[str], Any]] = None,
    ) -> ExecResult:
        return self.sandbox.exec(
            command,
            cwd=cwd,
            env=env,
            stdin=stdin,
            timeout_ms=timeout_ms,
            session=self.id,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
        )

    def stream(
        self,
        command: Command,
        *,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        stdin: Optional[str] = None,
        timeout_ms: Optional[int] = None,
    ) -> Iterator[ExecEvent]:
        return self.sandbox.stream(command, cwd=cwd, env=env, stdin=stdin, timeout_ms=timeout_ms, session=self.id)

    def refresh(self) -> SessionInfo:
        """Reload the session (its shell's current directory is read now). The default
        session is started first if no command has used it yet."""
        try:
            self.info = SessionInfo.from_json(self.sandbox._t.json(_api.get_session(self.sandbox.id, self.id)))
        except NotFoundError:
            if self.id != "default":
                raise
            self.exec(":")
            self.info = SessionInfo.from_json(self.sandbox._t.json(_api.get_session(self.sandbox.id, self.id)))
        return self.info

    @property
    def cwd(self) -> str:
        """The shell's current directory, asked of the server now."""
        return self.refresh().cwd

    def delete(self) -> None:
        """End the shell and everything it started."""
        self.sandbox._t.send(_api.delete_session(self.sandbox.id, self.id))


class Processes:
    """Background processes of one sandbox, by id."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox
        self._t = sandbox._t

    def start(
        self,
        command: Command,
        *,
        id: Optional[str] = None,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
    ) -> Process:
        """Start a command in the background; its logs are kept in the sandbox."""
        info = ProcessInfo.from_json(self._t.json(_api.start_process(self._sb.id, command, id, cwd, env)))
        return Process(self, info)

    def list(self) -> List[Process]:
        payload = self._t.json(_api.list_processes(self._sb.id))
        return [Process(self, ProcessInfo.from_json(d)) for d in _api.items(payload, "processes")]

    def get(self, id: str) -> Process:
        return Process(self, ProcessInfo.from_json(self._t.json(_api.get_process(self._sb.id, id))))

    def logs(self, id: str, stdout_offset: int = 0, stderr_offset: int = 0) -> ProcessLogs:
        """Output written since the offsets (pass the answer's offsets back to resume)."""
        return ProcessLogs.from_json(self._t.json(_api.process_logs(self._sb.id, id, stdout_offset, stderr_offset)))

    def stream_logs(self, id: str, stdout_offset: int = 0, stderr_offset: int = 0) -> Iterator[LogEvent]:
        """Follow the logs: ``StdoutEvent``/``StderrEvent`` (with offsets), then ``ExitEvent``."""
        call = _api.process_logs(self._sb.id, id, stdout_offset, stderr_offset)
        return cast(Iterator[LogEvent], self._t.events(call))

    def stdin(self, id: str, data: str, eof: bool = False) -> None:
        self._t.send(_api.process_stdin(self._sb.id, id, data, eof))

    def signal(self, id: str, signal: Union[str, int] = "SIGTERM") -> None:
        """Signal the process's whole tree (``"SIGTERM"``, ``"SIGINT"``, ``9``...)."""
        self._t.send(_api.process_signal(self._sb.id, id, signal))

    def kill(self, id: str) -> None:
        """SIGKILL the process's tree; its status and logs stay readable."""
        self.signal(id, "SIGKILL")

    def wait(self, id: str, timeout_ms: Optional[int] = None) -> ProcessInfo:
        """Wait for the process to exit (server default 30 s); still ``running`` on timeout."""
        return ProcessInfo.from_json(self._t.json(_api.process_wait(self._sb.id, id, timeout_ms)))

    def wait_port(self, id: str, port: int, timeout_ms: Optional[int] = None) -> PortReady:
        """Wait until the port accepts connections inside the sandbox (``TimeoutError`` after
        ``timeout_ms``; ``ConflictError`` code ``not_running`` if the process exits first)."""
        return PortReady.from_json(self._t.json(_api.process_wait_port(self._sb.id, id, port, timeout_ms)))

    def delete(self, id: str) -> None:
        """Kill the tree and forget the process and its logs."""
        self._t.send(_api.delete_process(self._sb.id, id))


class Process:
    """A handle on one background process; ``info`` is its last known state."""

    def __init__(self, processes: Processes, info: ProcessInfo) -> None:
        self._p = processes
        self.info = info
        self.id = info.id

    def __repr__(self) -> str:
        return f"Process(id={self.id!r}, status={self.info.status!r}, exit_code={self.info.exit_code!r})"

    @property
    def status(self) -> str:
        return self.info.status

    @property
    def exit_code(self) -> Optional[int]:
        return self.info.exit_code

    def refresh(self) -> ProcessInfo:
        self.info = self._p.get(self.id).info
        return self.info

    def logs(self, stdout_offset: int = 0, stderr_offset: int = 0) -> ProcessLogs:
        return self._p.logs(self.id, stdout_offset, stderr_offset)

    def stream_logs(self, stdout_offset: int = 0, stderr_offset: int = 0) -> Iterator[LogEvent]:
        return self._p.stream_logs(self.id, stdout_offset, stderr_offset)

    def stdin(self, data: str, eof: bool = False) -> None:
        self._p.stdin(self.id, data, eof)

    def signal(self, signal: Union[str, int] = "SIGTERM") -> None:
        self._p.signal(self.id, signal)

    def kill(self) -> None:
        self._p.kill(self.id)

    def wait(self, timeout_ms: Optional[int] = None) -> ProcessInfo:
        self.info = self._p.wait(self.id, timeout_ms)
        return self.info

    def wait_port(self, port: int, timeout_ms: Optional[int] = None) -> PortReady:
        return self._p.wait_port(self.id, port, timeout_ms)

    def delete(self) -> None:
        self._p.delete(self.id)


class Contexts:
    """Code interpreter contexts of one sandbox."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox
        self._t = sandbox._t

    def create(
        self,
        language: str = "python",
        *,
        id: Optional[str] = None,
        cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        context: Any = None,
    ) -> CodeContext:
        """A fresh interpreter; ``context`` (a string or JSON value) is preloaded as the
        variable ``context``."""
        call = _api.create_context(self._sb.id, id, language, cwd, env, context)
        return CodeContext(self._sb, ContextInfo.from_json(self._t.json(call)))

    def list(self) -> List[CodeContext]:
        payload = self._t.json(_api.list_contexts(self._sb.id))
        return [CodeContext(self._sb, ContextInfo.from_json(d)) for d in _api.items(payload, "contexts")]

    def get(self, id: str) -> CodeContext:
        return CodeContext(self._sb, ContextInfo.from_json(self._t.json(_api.get_context(self._sb.id, id))))

    def delete(self, id: str) -> None:
        self._t.send(_api.delete_context(self._sb.id, id))


class CodeContext:
    """A stateful interpreter: variables, imports and functions persist between runs."""

    def __init__(self, sandbox: Sandbox, info: ContextInfo) -> None:
        self.sandbox = sandbox
        self.info = info
        self.id = info.id

    def __repr__(self) -> str:
        return f"CodeContext(id={self.id!r}, language={self.info.language!r})"

    def run(self, code: str, *, timeout_ms: Optional[int] = None, locals: bool = False) -> Execution:
        return self.sandbox.run_code(code, context=self.id, timeout_ms=timeout_ms, locals=locals)

    def stream(self, code: str, *, timeout_ms: Optional[int] = None) -> Iterator[CodeEvent]:
        return self.sandbox.stream_code(code, context=self.id, timeout_ms=timeout_ms)

    def restart(self) -> ContextInfo:
        """A fresh interpreter in place of this one (state is lost)."""
        self.info = ContextInfo.from_json(self.sandbox._t.json(_api.restart_context(self.sandbox.id, self.id)))
        return self.info

    def delete(self) -> None:
        self.sandbox._t.send(_api.delete_context(self.sandbox.id, self.id))


class Snapshots:
    """Snapshots of one sandbox's files (``restore`` is on ``Sandbox``)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox
        self._t = sandbox._t

    def create(
        self, name: Optional[str] = None, *, path: Optional[str] = None, excludes: Optional[Sequence[str]] = None
    ) -> SnapshotInfo:
        return SnapshotInfo.from_json(self._t.json(_api.create_snapshot(self._sb.id, name, path, excludes)))

    def list(self) -> List[SnapshotInfo]:
        payload = self._t.json(_api.list_snapshots(self._sb.id))
        return [SnapshotInfo.from_json(d) for d in _api.items(payload, "snapshots")]

    def delete(self, snapshot: Union[str, SnapshotInfo]) -> None:
        sid = snapshot.id if isinstance(snapshot, SnapshotInfo) else snapshot
        self._t.send(_api.delete_snapshot(sid))


class Ports:
    """The ports of one sandbox: requests through sandpit's authenticated proxy, and public
    per-port tokens. Nothing inside the sandbox has to listen on anything but its loopback."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox
        self._t = sandbox._t

    def url(self, port: int, path: str = "/") -> str:
        """The proxy URL of ``path`` on ``port`` (needs the API key, unlike a token's URL)."""
        return self._t.settings.base_url + _api.port_path(self._sb.id, port, path)

    def request(
        self,
        port: int,
        method: str = "GET",
        path: str = "/",
        *,
        params: Optional[Mapping[str, Any]] = None,
        content: Union[bytes, str, None] = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> httpx.Response:
        """Send one HTTP request to the server listening on ``port`` inside the sandbox and
        answer its response as is (any status). The proxy's own failures raise:
        ``NotFoundError`` (no such sandbox), ``SandpitError`` with code ``bad_gateway`` (nothing
        listens there)."""
        body = content.encode() if isinstance(content, str) else content
        call = _api.port_request(self._sb.id, port, method, path, params, body, headers, timeout)
        resp = self._t._send(call, stream=False)
        return _proxied(resp)

    def get(self, port: int, path: str = "/", **kwargs: Any) -> httpx.Response:
        return self.request(port, "GET", path, **kwargs)

    def create_token(self, port: int) -> PortToken:
        """A new public token for ``port`` (replacing its previous one): ``url`` opens the
        port without the API key. The token is shown only here."""
        return PortToken.from_json(self._t.json(_api.create_port_token(self._sb.id, port)))

    def tokens(self) -> List[PortToken]:
        """The ports that have a public token (the tokens themselves are not retrievable)."""
        payload = self._t.json(_api.list_port_tokens(self._sb.id))
        return [PortToken.from_json(d) for d in _api.items(payload, "ports")]

    def revoke_token(self, port: int) -> None:
        """Revoke the port's public token (``NotFoundError`` when it has none)."""
        self._t.send(_api.revoke_port_token(self._sb.id, port))


def _proxied(resp: httpx.Response) -> httpx.Response:
    """The app's answer, unless the proxy itself refused (its errors carry sandpit's JSON
    shape with a code the proxy uses)."""
    if resp.status_code in (400, 401, 404, 409, 502, 503) and "application/json" in resp.headers.get("content-type", ""):
        try:
            code = resp.json().get("error", {}).get("code")
        except (ValueError, AttributeError):
            code = None
        if code in ("bad_request", "unauthorized", "not_found", "not_running", "bad_gateway", "sandbox_unavailable"):
            raise from_body(resp.status_code, resp.content, resp.headers.get("retry-after"))
    return resp


__all__ = [
    "Client",
    "Ports",
    "Sandbox",
    "Files",
    "Sessions",
    "Session",
    "Processes",
    "Process",
    "Contexts",
    "CodeContext",
    "Snapshots",
    "ResultEvent",
    "SandpitError",
]
