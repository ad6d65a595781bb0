"""The wire format in one place: every route as a ``Call``, the SSE decoder, settings.

The sync and asyncio clients both build their requests here and differ only in how they
send them, so a route or a field changes in one place.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, AsyncIterable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import quote

from .models import ExecResult, Limits

DEFAULT_URL = "http://127.0.0.1:8787"
DEFAULT_TIMEOUT = 60.0
# Headroom over a server-side timeout so the server, not the client, ends a long call.
SLACK_SECONDS = 30.0
USER_AGENT = "sandpit-python/0.1.0"

Command = Union[str, Sequence[str]]
Body = Union[bytes, Iterable[bytes], AsyncIterable[bytes], None]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class Settings:
    """Where the server is and how to talk to it; see ``Client`` for the meaning."""

    base_url: str
    token: Optional[str]
    timeout: float
    retries: int
    headers: Dict[str, str]

    @classmethod
    def resolve(
        cls,
        base_url: Optional[str],
        token: Optional[str],
        timeout: float,
        retries: int,
        headers: Optional[Mapping[str, str]],
    ) -> Settings:
        url = base_url or os.environ.get("SANDPIT_URL") or DEFAULT_URL
        tok = token if token is not None else os.environ.get("SANDPIT_AUTH_TOKEN") or None
        h = {"User-Agent": USER_AGENT}
        if tok:
            h["Authorization"] = f"Bearer {tok}"
        h.update(headers or {})
        return cls(base_url=url.rstrip("/"), token=tok, timeout=timeout, retries=max(0, retries), headers=h)


@dataclass(frozen=True)
class Call:
    """One HTTP request: ``timeout`` is the read timeout (``None``: wait forever, for streams);
    UNSET means the client's default."""

    method: str
    path: str
    params: Optional[Dict[str, Any]] = None
    json: Any = None
    content: Body = None
    timeout: Any = UNSET
    headers: Dict[str, str] = field(default_factory=dict)

    @property
    def idempotent(self) -> bool:
        """Safe to resend after a connection error (and only when the body can be resent)."""
        if self.method not in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS"):
            return False
        return self.content is None or isinstance(self.content, (bytes, bytearray))

    def sse(self) -> Call:
        """The same call asking for Server-Sent Events, with no read timeout."""
        return Call(
            self.method,
            self.path,
            self.params,
            self.json,
            self.content,
            None,
            {**self.headers, "Accept": "text/event-stream"},
        )


def _q(value: str) -> str:
    return quote(str(value), safe="")


def _clean(d: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _after(timeout_ms: Optional[int], default_ms: int) -> float:
    return (timeout_ms if timeout_ms is not None else default_ms) / 1000.0 + SLACK_SECONDS


def command_body(command: Command) -> Dict[str, Any]:
    if isinstance(command, str):
        return {"command": command}
    argv = list(command)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError("argv must be a non-empty sequence of strings")
    return {"argv": argv}


def sb_path(sandbox_id: str, *rest: str) -> str:
    return "/".join(["/v1/sandboxes", _q(sandbox_id), *rest])


# -- sandboxes -----------------------------------------------------------------------------


def health() -> Call:
    return Call("GET", "/health")


def create_sandbox(
    id: Optional[str],
    keepalive_seconds: Optional[int],
    env: Optional[Mapping[str, str]],
    limits: Union[Limits, Mapping[str, Any], None],
    extra: Mapping[str, Any],
) -> Call:
    """``extra``: the newer optional fields (network, allow, restore, sleep_after_seconds,
    snapshot_on_expiry); ``None`` values are left out, so older servers never see them."""
    lim = limits.to_json() if isinstance(limits, Limits) else (dict(limits) if limits else None)
    body = _clean(
        {"id": id, "keepalive_seconds": keepalive_seconds, "env": dict(env) if env else None, "limits": lim, **extra}
    )
    return Call("POST", "/v1/sandboxes", json=body, timeout=None if "restore" in body else 120.0)


def create_extra(
    network: Optional[str],
    allow: Optional[Sequence[str]],
    restore: Union[str, Mapping[str, Any], None],
    sleep_after_seconds: Optional[int],
    snapshot_on_expiry: Optional[bool],
) -> Dict[str, Any]:
    return _clean(
        {
            "network": network,
            "allow": list(allow) if allow is not None else None,
            "restore": dict(restore) if isinstance(restore, Mapping) else restore,
            "sleep_after_seconds": sleep_after_seconds,
            "snapshot_on_expiry": snapshot_on_expiry,
        }
    )


def list_sandboxes() -> Call:
    return Call("GET", "/v1/sandboxes")


def get_sandbox(sid: str) -> Call:
    return Call("GET", sb_path(sid))


def update_sandbox(sid: str, fields: Mapping[str, Any]) -> Call:
    return Call("PATCH", sb_path(sid), json=_clean(fields))


def keepalive(sid: str) -> Call:
    return Call("POST", sb_path(sid, "keepalive"))


def delete_sandbox(sid: str) -> Call:
    return Call("DELETE", sb_path(sid), timeout=120.0)


def sleep(sid: str) -> Call:
    return Call("POST", sb_path(sid, "sleep"), json={}, timeout=300.0)


def wake(sid: str) -> Call:
    return Call("POST", sb_path(sid, "wake"), json={}, timeout=300.0)


# -- exec ----------------------------------------------------------------------------------


def exec_(
    sid: str,
    command: Command,
    cwd: Optional[str],
    env: Optional[Mapping[str, str]],
    stdin: Optional[str],
    timeout_ms: Optional[int],
    session: Optional[str],
    kill_on_disconnect: Optional[bool],
) -> Call:
    body = {
        **command_body(command),
        **_clean(
            {
                "cwd": cwd,
                "env": dict(env) if env is not None else None,
                "stdin": stdin,
                "timeout_ms": timeout_ms,
                "session": session,
                "kill_on_disconnect": kill_on_disconnect,
            }
        ),
    }
    # Without timeout_ms the server's configured default applies (120 s unless changed), so
    # the client waits for the server to end the command rather than guess its limit.
    read = _after(timeout_ms, 0) if timeout_ms is not None else None
    return Call("POST", sb_path(sid, "exec"), json=body, timeout=read)


# -- files ---------------------------------------------------------------------------------


def read_file(sid: str, path: str) -> Call:
    return Call("GET", sb_path(sid, "files"), params={"path": path})


def write_file(sid: str, path: str, content: Body) -> Call:
    return Call(
        "PUT",
        sb_path(sid, "files"),
        params={"path": path},
        content=content,
        headers={"Content-Type": "application/octet-stream"},
        timeout=None,
    )


def remove_file(sid: str, path: str, recursive: bool) -> Call:
    params: Dict[str, Any] = {"path": path}
    if recursive:
        params["recursive"] = "true"
    return Call("DELETE", sb_path(sid, "files"), params=params)


def list_files(sid: str, path: str) -> Call:
    return Call("GET", sb_path(sid, "files", "list"), params={"path": path})


def stat_file(sid: str, path: str) -> Call:
    return Call("GET", sb_path(sid, "files", "stat"), params={"path": path})


def mkdir(sid: str, path: str, parents: bool) -> Call:
    return Call("POST", sb_path(sid, "files", "mkdir"), json={"path": path, "parents": parents})


def move(sid: str, src: str, dst: str) -> Call:
    return Call("POST", sb_path(sid, "files", "move"), json={"from": src, "to": dst})


# -- sessions ------------------------------------------------------------------------------


def create_session(sid: str, id: Optional[str], cwd: Optional[str], env: Optional[Mapping[str, str]]) -> Call:
    body = _clean({"id": id, "cwd": cwd, "env": dict(env) if env else None})
    return Call("POST", sb_path(sid, "sessions"), json=body)


def list_sessions(sid: str) -> Call:
    return Call("GET", sb_path(sid, "sessions"))


def get_session(sid: str, session: str) -> Call:
    return Call("GET", sb_path(sid, "sessions", _q(session)))


def delete_session(sid: str, session: str) -> Call:
    return Call("DELETE", sb_path(sid, "sessions", _q(session)))


# -- background processes ------------------------------------------------------------------


def start_process(
    sid: str, command: Command, id: Optional[str], cwd: Optional[str], env: Optional[Mapping[str, str]]
) -> Call:
    body = {**command_body(command), **_clean({"id": id, "cwd": cwd, "env": dict(env) if env else None})}
    return Call("POST", sb_path(sid, "processes"), json=body)


def list_processes(sid: str) -> Call:
    return Call("GET", sb_path(sid, "processes"))


def get_process(sid: str, pid: str) -> Call:
    return Call("GET", sb_path(sid, "processes", _q(pid)))


def process_logs(sid: str, pid: str, stdout_offset: int, stderr_offset: int) -> Call:
    params = {"stdout_offset": stdout_offset, "stderr_offset": stderr_offset}
    return Call("GET", sb_path(sid, "processes", _q(pid), "logs"), params=params)


def process_stdin(sid: str, pid: str, data: str, eof: bool) -> Call:
    return Call("POST", sb_path(sid, "processes", _q(pid), "stdin"), json={"data": data, "eof": eof})


def process_signal(sid: str, pid: str, signal: Union[str, int]) -> Call:
    return Call("POST", sb_path(sid, "processes", _q(pid), "signal"), json={"signal": signal})


def process_wait(sid: str, pid: str, timeout_ms: Optional[int]) -> Call:
    body = _clean({"timeout_ms": timeout_ms})
    return Call("POST", sb_path(sid, "processes", _q(pid), "wait"), json=body, timeout=_after(timeout_ms, 30_000))


def process_wait_port(sid: str, pid: str, port: int, timeout_ms: Optional[int]) -> Call:
    body = _clean({"port": port, "timeout_ms": timeout_ms})
    return Call("POST", sb_path(sid, "processes", _q(pid), "wait-port"), json=body, timeout=_after(timeout_ms, 30_000))


def delete_process(sid: str, pid: str) -> Call:
    return Call("DELETE", sb_path(sid, "processes", _q(pid)))


# -- code interpreter ----------------------------------------------------------------------


def run_code(
    sid: str,
    code: str,
    language: Optional[str],
    context: Optional[str],
    timeout_ms: Optional[int],
    locals: bool,
) -> Call:
    body = _clean(
        {"code": code, "language": language, "context": context, "timeout_ms": timeout_ms, "locals": locals or None}
    )
    return Call("POST", sb_path(sid, "code"), json=body, timeout=_after(timeout_ms, 60_000))


def create_context(
    sid: str,
    id: Optional[str],
    language: Optional[str],
    cwd: Optional[str],
    env: Optional[Mapping[str, str]],
    context: Any,
) -> Call:
    body = _clean({"id": id, "language": language, "cwd": cwd, "env": dict(env) if env else None, "context": context})
    return Call("POST", sb_path(sid, "contexts"), json=body, timeout=120.0)


def list_contexts(sid: str) -> Call:
    return Call("GET", sb_path(sid, "contexts"))


def get_context(sid: str, cid: str) -> Call:
    return Call("GET", sb_path(sid, "contexts", _q(cid)))


def delete_context(sid: str, cid: str) -> Call:
    return Call("DELETE", sb_path(sid, "contexts", _q(cid)))


def restart_context(sid: str, cid: str) -> Call:
    return Call("POST", sb_path(sid, "contexts", _q(cid), "restart"), timeout=120.0)


# -- snapshots and git ---------------------------------------------------------------------


def create_snapshot(sid: str, name: Optional[str], path: Optional[str], excludes: Optional[Sequence[str]]) -> Call:
    body = _clean({"name": name, "path": path, "excludes": list(excludes) if excludes is not None else None})
    return Call("POST", sb_path(sid, "snapshots"), json=body, timeout=None)


def list_snapshots(sid: str) -> Call:
    return Call("GET", sb_path(sid, "snapshots"))


def delete_snapshot(snapshot_id: str) -> Call:
    return Call("DELETE", "/v1/snapshots/" + _q(snapshot_id))


def get_snapshot(snapshot_id: str) -> Call:
    return Call("GET", "/v1/snapshots/" + _q(snapshot_id))


def restore(sid: str, snapshot: Optional[str], from_sandbox: Optional[str]) -> Call:
    body = _clean({"snapshot": snapshot, "from_sandbox": from_sandbox})
    return Call("POST", sb_path(sid, "restore"), json=body, timeout=None)


def limits_json(limits: Union[Limits, Mapping[str, Any], None]) -> Optional[Dict[str, Any]]:
    if isinstance(limits, Limits):
        return limits.to_json() or None
    return (_clean(limits) or None) if limits else None


def git_clone(sid: str, url: str, fields: Mapping[str, Any]) -> Call:
    return Call("POST", sb_path(sid, "git", "clone"), json={"url": url, **_clean(fields)}, timeout=None)


# -- tenants and ports --------------------------------------------------------------------


def tenant() -> Call:
    return Call("GET", "/v1/tenant")


def port_path(sid: str, port: int, path: str) -> str:
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port} is not in 1-65535")
    return sb_path(sid, "ports", str(int(port))) + "/" + path.lstrip("/")


def port_request(
    sid: str,
    port: int,
    method: str,
    path: str,
    params: Optional[Mapping[str, Any]],
    content: Body,
    headers: Optional[Mapping[str, str]],
    timeout: Optional[float],
) -> Call:
    return Call(
        method.upper(),
        port_path(sid, port, path),
        params=dict(params) if params else None,
        content=content,
        headers=dict(headers or {}),
        timeout=UNSET if timeout is None else timeout,
    )


def create_port_token(sid: str, port: int) -> Call:
    return Call("POST", sb_path(sid, "port-tokens", str(int(port))))


def list_port_tokens(sid: str) -> Call:
    return Call("GET", sb_path(sid, "port-tokens"))


def revoke_port_token(sid: str, port: int) -> Call:
    return Call("DELETE", sb_path(sid, "port-tokens", str(int(port))))


# -- answers -------------------------------------------------------------------------------


def items(payload: Any, key: str) -> List[Dict[str, Any]]:
    """The list under ``key`` of a list answer (``{"sandboxes": [...]}``), or a bare list."""
    seq = payload.get(key) if isinstance(payload, dict) else payload
    return [x for x in seq or [] if isinstance(x, dict)]


class SSEDecoder:
    """Turns the lines of a ``text/event-stream`` into ``(event, data)`` pairs.

    Feed it every line (without its newline); it answers a pair at each blank line that ends
    an event with data. Comment lines (``:`` keep-alives) are skipped.
    """

    def __init__(self) -> None:
        self._event = "message"
        self._data: List[str] = []

    def feed(self, line: str) -> Optional[Tuple[str, Dict[str, Any]]]:
        if line == "":
            if not self._data:
                self._event = "message"
                return None
            event, raw = self._event, "\n".join(self._data)
            self._event, self._data = "message", []
            try:
                data = json.loads(raw)
            except ValueError:
                data = {"data": raw}
            return event, data if isinstance(data, dict) else {"data": data}
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None

    def flush(self) -> Optional[Tuple[str, Dict[str, Any]]]:
        """The last event when the stream ends without its blank line."""
        return self.feed("")


class LineSplitter:
    """Per-line output of a streamed command for ``exec(on_stdout=..., on_stderr=...)``:
    ``feed`` takes a chunk of one stream and answers its complete lines (without the
    newline); ``rest`` the last unterminated line. The whole text is kept for the result."""

    def __init__(self) -> None:
        self.text: List[str] = []
        self._partial = ""

    def feed(self, chunk: str) -> List[str]:
        self.text.append(chunk)
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()
        return lines

    def rest(self) -> Optional[str]:
        line, self._partial = self._partial, ""
        return line or None


def streamed_result(out: LineSplitter, err: LineSplitter, exit: Any) -> ExecResult:
    """The ``ExecResult`` of a streamed command from its output and ``ExitEvent``."""
    return ExecResult(
        stdout="".join(out.text),
        stderr="".join(err.text),
        exit_code=exit.exit_code if exit.exit_code is not None else -1,
        duration_ms=exit.duration_ms or 0,
        timed_out=bool(exit.timed_out),
    )
