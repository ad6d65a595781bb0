"""Typed values the API answers with: plain dataclasses parsed from the server's JSON.

Parsing is lenient about fields the server adds later (they are kept in ``raw``) and strict
about nothing else, so an older SDK keeps working against a newer server.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, List, Mapping, Optional, Union

from .errors import CodeError, CommandError

JSON = Dict[str, Any]


def _dt(value: Any) -> Optional[datetime]:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _int(value: Any, default: int = 0) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _opt_int(value: Any) -> Optional[int]:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


@dataclass(frozen=True)
class Limits:
    """Resource limits of a sandbox; ``None`` fields are left to the server's defaults (and,
    in ``Sandbox.update``, unchanged)."""

    memory_mb: Optional[int] = None
    cpus: Optional[float] = None
    pids: Optional[int] = None
    open_files: Optional[int] = None
    #: Size in MB of the sandbox's own disk (its whole writable root); a full disk is ENOSPC
    #: inside. Root servers only; it can grow (not shrink) while the sandbox runs.
    disk_mb: Optional[int] = None

    @classmethod
    def from_json(cls, data: Any) -> Limits:
        d = data if isinstance(data, dict) else {}
        cpus = d.get("cpus")
        return cls(
            memory_mb=_opt_int(d.get("memory_mb")),
            cpus=float(cpus) if isinstance(cpus, (int, float)) else None,
            pids=_opt_int(d.get("pids")),
            open_files=_opt_int(d.get("open_files")),
            disk_mb=_opt_int(d.get("disk_mb")),
        )

    def to_json(self) -> JSON:
        fields = {
            "memory_mb": self.memory_mb,
            "cpus": self.cpus,
            "pids": self.pids,
            "open_files": self.open_files,
            "disk_mb": self.disk_mb,
        }
        return {k: v for k, v in fields.items() if v is not None}


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as the server describes it (``GET /v1/sandboxes/{id}``)."""

    id: str
    status: str
    created_at: Optional[datetime]
    expires_at: Optional[datetime]
    last_active_at: Optional[datetime]
    keepalive_seconds: int
    limits: Limits
    network: str
    warnings: List[str]
    raw: JSON = field(repr=False, compare=False)
    # Shown by servers that have networking and sleep (None otherwise).
    allow: Optional[List[str]] = None
    sleep_after_seconds: Optional[int] = None
    snapshot_on_expiry: Optional[bool] = None
    #: MB used on the sandbox's own disk (when it has ``limits.disk_mb``; shown by a get).
    disk_used_mb: Optional[int] = None

    @classmethod
    def from_json(cls, d: JSON) -> SandboxInfo:
        return cls(
            id=_str(d.get("id")),
            status=_str(d.get("status")),
            created_at=_dt(d.get("created_at")),
            expires_at=_dt(d.get("expires_at")),
            last_active_at=_dt(d.get("last_active_at")),
            keepalive_seconds=_int(d.get("keepalive_seconds")),
            limits=Limits.from_json(d.get("limits")),
            network=_str(d.get("network")),
            warnings=[str(w) for w in d.get("warnings") or []],
            raw=d,
            allow=[str(a) for a in d["allow"]] if isinstance(d.get("allow"), list) else None,
            sleep_after_seconds=_opt_int(d.get("sleep_after_seconds")),
            snapshot_on_expiry=d["snapshot_on_expiry"] if isinstance(d.get("snapshot_on_expiry"), bool) else None,
            disk_used_mb=_opt_int(d.get("disk_used_mb")),
        )


@dataclass(frozen=True)
class ExecResult:
    """The answer of a buffered command: its output, exit code and timing."""

    stdout: str
    stderr: str
    exit_code: int
    duration_ms: int
    timed_out: bool
    truncated: bool = False

    @classmethod
    def from_json(cls, d: JSON) -> ExecResult:
        return cls(
            stdout=_str(d.get("stdout")),
            stderr=_str(d.get("stderr")),
            exit_code=_int(d.get("exit_code"), -1),
            duration_ms=_int(d.get("duration_ms")),
            timed_out=bool(d.get("timed_out")),
            truncated=bool(d.get("truncated")),
        )

    @property
    def ok(self) -> bool:
        """True when the command exited 0 and was not killed for its timeout."""
        return self.exit_code == 0 and not self.timed_out

    def check(self) -> ExecResult:
        """Return self when ``ok``; raise ``CommandError`` otherwise."""
        if not self.ok:
            raise CommandError(self)
        return self


# -- streamed events (exec SSE, process logs SSE, code SSE) -------------------------------


@dataclass(frozen=True)
class StartEvent:
    """The command or code run started, as process ``pid`` inside the sandbox."""

    pid: int


@dataclass(frozen=True)
class StdoutEvent:
    """A chunk of standard output; ``offset`` (process logs) is where to resume after it."""

    data: str
    offset: Optional[int] = None


@dataclass(frozen=True)
class StderrEvent:
    """A chunk of standard error; ``offset`` (process logs) is where to resume after it."""

    data: str
    offset: Optional[int] = None


@dataclass(frozen=True)
class ExitEvent:
    """The process exited (sent once it really has); the last event of a stream."""

    exit_code: Optional[int]
    duration_ms: Optional[int] = None
    timed_out: bool = False


@dataclass(frozen=True)
class ResultEvent:
    """The end of a streamed ``run_code``: the execution without its stdout/stderr."""

    execution: Execution


ExecEvent = Union[StartEvent, StdoutEvent, StderrEvent, ExitEvent]
LogEvent = Union[StdoutEvent, StderrEvent, ExitEvent]
CodeEvent = Union[StartEvent, StdoutEvent, StderrEvent, ResultEvent]


def parse_event(name: str, data: JSON) -> Optional[Union[ExecEvent, ResultEvent]]:
    """One SSE event as a typed value; ``None`` for events this SDK does not know."""
    if name == "start":
        return StartEvent(pid=_int(data.get("pid")))
    if name == "stdout":
        return StdoutEvent(data=_str(data.get("data")), offset=_opt_int(data.get("offset")))
    if name == "stderr":
        return StderrEvent(data=_str(data.get("data")), offset=_opt_int(data.get("offset")))
    if name == "exit":
        return ExitEvent(
            exit_code=_opt_int(data.get("exit_code")),
            duration_ms=_opt_int(data.get("duration_ms")),
            timed_out=bool(data.get("timed_out")),
        )
    if name == "result":
        return ResultEvent(execution=Execution.from_json(data))
    return None


# -- sessions, processes, files ------------------------------------------------------------


@dataclass(frozen=True)
class SessionInfo:
    id: str
    cwd: str
    pid: Optional[int]
    created_at: Optional[datetime]

    @classmethod
    def from_json(cls, d: JSON) -> SessionInfo:
        return cls(
            id=_str(d.get("id")),
            cwd=_str(d.get("cwd")),
            pid=_opt_int(d.get("pid")),
            created_at=_dt(d.get("created_at")),
        )


@dataclass(frozen=True)
class ProcessInfo:
    """A background process: ``status`` is ``running`` or ``exited``."""

    id: str
    pid: Optional[int]
    command: List[str]
    cwd: str
    status: str
    exit_code: Optional[int]
    started_at: Optional[datetime]
    exited_at: Optional[datetime]

    @classmethod
    def from_json(cls, d: JSON) -> ProcessInfo:
        return cls(
            id=_str(d.get("id")),
            pid=_opt_int(d.get("pid")),
            command=[str(c) for c in d.get("command") or []],
            cwd=_str(d.get("cwd")),
            status=_str(d.get("status")),
            exit_code=_opt_int(d.get("exit_code")),
            started_at=_dt(d.get("started_at")),
            exited_at=_dt(d.get("exited_at")),
        )

    @property
    def running(self) -> bool:
        return self.status == "running"


@dataclass(frozen=True)
class ProcessLogs:
    """Logs from the asked offsets; pass ``stdout_offset``/``stderr_offset`` back to resume."""

    stdout: str
    stderr: str
    stdout_offset: int
    stderr_offset: int
    status: str
    exit_code: Optional[int]

    @classmethod
    def from_json(cls, d: JSON) -> ProcessLogs:
        return cls(
            stdout=_str(d.get("stdout")),
            stderr=_str(d.get("stderr")),
            stdout_offset=_int(d.get("stdout_offset")),
            stderr_offset=_int(d.get("stderr_offset")),
            status=_str(d.get("status")),
            exit_code=_opt_int(d.get("exit_code")),
        )


@dataclass(frozen=True)
class PortReady:
    port: int
    ready: bool

    @classmethod
    def from_json(cls, d: JSON) -> PortReady:
        return cls(port=_int(d.get("port")), ready=bool(d.get("ready")))


@dataclass(frozen=True)
class FileEntry:
    """A directory entry or ``stat`` answer; ``type`` is file, dir, symlink or other."""

    name: str
    path: str
    type: str
    size: int
    mode: int
    modified_at: Optional[datetime]

    @classmethod
    def from_json(cls, d: JSON) -> FileEntry:
        return cls(
            name=_str(d.get("name")),
            path=_str(d.get("path")),
            type=_str(d.get("type")),
            size=_int(d.get("size")),
            mode=_int(d.get("mode")),
            modified_at=_dt(d.get("modified_at")),
        )

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"

    @property
    def is_file(self) -> bool:
        return self.type == "file"


# -- code interpreter ----------------------------------------------------------------------


@dataclass(frozen=True)
class ContextInfo:
    """A code interpreter context (``python`` or ``javascript``)."""

    id: str
    language: str
    cwd: str
    pid: Optional[int]
    status: str
    version: str
    created_at: Optional[datetime]

    @classmethod
    def from_json(cls, d: JSON) -> ContextInfo:
        return cls(
            id=_str(d.get("id")),
            language=_str(d.get("language")),
            cwd=_str(d.get("cwd")),
            pid=_opt_int(d.get("pid")),
            status=_str(d.get("status")),
            version=_str(d.get("version")),
            created_at=_dt(d.get("created_at")),
        )


_MIME_FIELDS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/json": "json",
    "text/latex": "latex",
    "application/javascript": "javascript",
}


@dataclass(frozen=True)
class Result:
    """One rich result of a run: the last expression's value (``is_main_result``) or a figure.

    ``data`` maps MIME types to the server's representation (images are base64 there);
    the properties decode them (``png`` is bytes). In Jupyter a ``Result`` displays itself
    through ``_repr_mimebundle_`` and the ``_repr_*_`` methods.
    """

    data: Mapping[str, Any]
    is_main_result: bool = False

    @classmethod
    def from_json(cls, d: JSON) -> Result:
        data = {k: v for k, v in d.items() if k != "is_main_result"}
        return cls(data=data, is_main_result=bool(d.get("is_main_result")))

    def _text_of(self, mime: str) -> Optional[str]:
        v = self.data.get(mime)
        return v if isinstance(v, str) else None

    def _image(self, mime: str) -> Optional[bytes]:
        v = self.data.get(mime)
        if not isinstance(v, str):
            return None
        try:
            return base64.b64decode(v)
        except ValueError:
            return None

    @property
    def formats(self) -> List[str]:
        """The MIME types this result has."""
        return list(self.data)

    @property
    def text(self) -> Optional[str]:
        return self._text_of("text/plain")

    @property
    def html(self) -> Optional[str]:
        return self._text_of("text/html")

    @property
    def markdown(self) -> Optional[str]:
        return self._text_of("text/markdown")

    @property
    def svg(self) -> Optional[str]:
        return self._text_of("image/svg+xml")

    @property
    def latex(self) -> Optional[str]:
        return self._text_of("text/latex")

    @property
    def png(self) -> Optional[bytes]:
        return self._image("image/png")

    @property
    def jpeg(self) -> Optional[bytes]:
        return self._image("image/jpeg")

    @property
    def json(self) -> Any:
        v = self.data.get("application/json")
        if isinstance(v, str):
            try:
                return json.loads(v)
            except ValueError:
                return v
        return v

    def _repr_png_(self) -> Optional[bytes]:
        return self.png

    def _repr_jpeg_(self) -> Optional[bytes]:
        return self.jpeg

    def _repr_svg_(self) -> Optional[str]:
        return self.svg

    def _repr_html_(self) -> Optional[str]:
        return self.html

    def _repr_markdown_(self) -> Optional[str]:
        return self.markdown

    def _repr_latex_(self) -> Optional[str]:
        return self.latex

    def _repr_json_(self) -> Any:
        return self.json

    def _repr_mimebundle_(self, include: Optional[Any] = None, exclude: Optional[Any] = None) -> Dict[str, Any]:
        """Every representation, as Jupyter's display protocol takes them (images base64)."""
        bundle = {k: v for k, v in self.data.items() if v is not None}
        if include:
            bundle = {k: v for k, v in bundle.items() if k in include}
        if exclude:
            bundle = {k: v for k, v in bundle.items() if k not in exclude}
        return bundle

    def __str__(self) -> str:
        return self.text or ", ".join(self.formats)


@dataclass(frozen=True)
class ExecutionError:
    """An exception raised by the code: its class name, message and formatted traceback."""

    name: str
    value: str
    traceback: str

    @classmethod
    def from_json(cls, d: Any) -> Optional[ExecutionError]:
        if not isinstance(d, dict):
            return None
        return cls(name=_str(d.get("name")), value=_str(d.get("value")), traceback=_str(d.get("traceback")))


@dataclass(frozen=True)
class Execution:
    """What one ``run_code`` did: output, rich results, and the error if the code raised."""

    results: List[Result]
    stdout: str
    stderr: str
    error: Optional[ExecutionError]
    execution_count: int
    timed_out: bool
    truncated: bool = False
    locals: Optional[Dict[str, str]] = None

    @classmethod
    def from_json(cls, d: JSON) -> Execution:
        loc = d.get("locals")
        return cls(
            results=[Result.from_json(r) for r in d.get("results") or [] if isinstance(r, dict)],
            stdout=_str(d.get("stdout")),
            stderr=_str(d.get("stderr")),
            error=ExecutionError.from_json(d.get("error")),
            execution_count=_int(d.get("execution_count")),
            timed_out=bool(d.get("timed_out")),
            truncated=bool(d.get("truncated")),
            locals={str(k): str(v) for k, v in loc.items()} if isinstance(loc, dict) else None,
        )

    @property
    def main_result(self) -> Optional[Result]:
        """The value of the code's last expression, if it had one."""
        return next((r for r in self.results if r.is_main_result), None)

    @property
    def text(self) -> Optional[str]:
        """``text/plain`` of the main result (e.g. ``"42"``)."""
        main = self.main_result
        return main.text if main else None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.timed_out

    def check(self) -> Execution:
        """Return self when the code ran without error; raise ``CodeError`` otherwise."""
        if self.error is not None:
            raise CodeError(self.error.name, self.error.value, self.error.traceback)
        if self.timed_out:
            raise CodeError("TimeoutError", "the run timed out", "")
        return self


# -- snapshots -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotInfo:
    id: str
    name: str
    sandbox_id: str
    path: str
    size_bytes: int
    created_at: Optional[datetime]
    raw: JSON = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: JSON) -> SnapshotInfo:
        return cls(
            id=_str(d.get("id")),
            name=_str(d.get("name")),
            sandbox_id=_str(d.get("sandbox_id")),
            path=_str(d.get("path")),
            size_bytes=_int(d.get("size_bytes")),
            created_at=_dt(d.get("created_at")),
            raw=d,
        )


@dataclass(frozen=True)
class GitResult:
    """What ``git_clone`` did: ``action`` is ``clone``, or ``pull`` when ``dir`` already held
    the repository; ``commit`` is the checked-out commit."""

    action: str
    dir: str
    commit: str
    branch: str
    raw: JSON = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Any) -> GitResult:
        d = d if isinstance(d, dict) else {}
        return cls(
            action=_str(d.get("action")),
            dir=_str(d.get("dir")),
            commit=_str(d.get("commit")),
            branch=_str(d.get("branch")),
            raw=d,
        )


# -- tenants and ports ---------------------------------------------------------------------


@dataclass(frozen=True)
class TenantInfo:
    """``GET /v1/tenant``: who the key belongs to, its quotas (absent = unlimited), what it
    uses now, and the server's own caps (``max_output_bytes``, ``max_upload_bytes``)."""

    tenant: str
    admin: bool
    quotas: Dict[str, int]
    usage: Dict[str, int]
    server_limits: Dict[str, int]
    raw: JSON = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Any) -> TenantInfo:
        d = d if isinstance(d, dict) else {}

        def ints(value: Any) -> Dict[str, int]:
            items = value.items() if isinstance(value, dict) else []
            return {str(k): _int(v) for k, v in items if _opt_int(v) is not None}

        return cls(
            tenant=_str(d.get("tenant")),
            admin=d.get("admin") is True,
            quotas=ints(d.get("quotas")),
            usage=ints(d.get("usage")),
            server_limits=ints(d.get("server_limits")),
            raw=d,
        )


@dataclass(frozen=True)
class PortToken:
    """A public token for one port of a sandbox. ``token`` is shown once, when it is made
    (``None`` in a listing); ``url`` opens the port without the API key."""

    port: int
    url: str
    token: Optional[str]
    created_at: Optional[datetime]
    raw: JSON = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Any) -> PortToken:
        d = d if isinstance(d, dict) else {}
        created = d.get("created_at")
        return cls(
            port=_int(d.get("port")),
            url=_str(d.get("url")),
            token=d["token"] if isinstance(d.get("token"), str) else None,
            created_at=_dt(created) if isinstance(created, str) else _ms(created),
            raw=d,
        )


def _ms(value: Any) -> Optional[datetime]:
    """A time given as milliseconds since the epoch."""
    from datetime import timezone

    ms = _opt_int(value)
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc) if ms is not None else None
