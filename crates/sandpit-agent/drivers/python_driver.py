# sandpit's Python code-interpreter driver: one long-lived interpreter per context.
# Requests arrive as JSON lines on fd 3; events and results leave as JSON lines on fd 4.
# User code runs in one namespace, so variables, imports, functions and classes persist.
import ast
import base64
import json
import os
import sys
import traceback
import types

_req = os.fdopen(3, "rb", buffering=0)
_out = os.fdopen(4, "w", buffering=1)


def _send(obj):
    _out.write(json.dumps(obj) + "\n")
    _out.flush()


class _Stream:
    """A text stream that sends what is written to it as events, in order."""

    def __init__(self, name):
        self.name = name
        self.encoding = "utf-8"
        self.errors = "replace"

    def write(self, s):
        if not isinstance(s, str):
            s = str(s)
        if s:
            _send({"event": self.name, "data": s})
        return len(s)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        pass

    def isatty(self):
        return False

    def fileno(self):
        return 1 if self.name == "stdout" else 2

    @property
    def closed(self):
        return False

    def readable(self):
        return False

    def writable(self):
        return True


_MIME = [
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
    ("_repr_javascript_", "application/javascript"),
]


def _represent(value, main):
    out = {"text/plain": _safe_repr(value)}
    for attr, mime in _MIME:
        fn = getattr(value, attr, None)
        if fn is None or isinstance(value, type):
            continue
        try:
            data = fn()
        except Exception:
            continue
        if isinstance(data, tuple):
            data = data[0]
        if data is None:
            continue
        if isinstance(data, bytes):
            data = base64.b64encode(data).decode("ascii")
        out[mime] = data
    fig = _figure_png(value)
    if fig is not None:
        out["image/png"] = fig
    out["is_main_result"] = main
    return out


def _figure_png(value):
    mpl = sys.modules.get("matplotlib.figure")
    if mpl is None or not isinstance(value, mpl.Figure):
        return None
    import io

    buf = io.BytesIO()
    value.savefig(buf, format="png", bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _open_figures():
    """Figures left open by pyplot, as display results (then closed, like a notebook)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return []
    results = []
    for num in plt.get_fignums():
        png = _figure_png(plt.figure(num))
        if png is not None:
            results.append({"text/plain": "<Figure>", "image/png": png, "is_main_result": False})
    plt.close("all")
    return results


def _safe_repr(value):
    try:
        return repr(value)
    except Exception as e:  # a broken __repr__ must not break the run
        return "<unrepresentable %s: %s>" % (type(value).__name__, e)


_ns = {"__name__": "__main__", "__builtins__": __builtins__}
_initial = set(_ns)
_count = 0


def _user_locals():
    return {
        k: _safe_repr(v)
        for k, v in _ns.items()
        if not k.startswith("_") and k not in _initial and not isinstance(v, types.ModuleType)
    }


def _run(code, want_locals):
    global _count
    _count += 1
    results, error = [], None
    try:
        tree = ast.parse(code, "<cell>", "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<cell>", "exec"), _ns)
        if last is not None:
            value = eval(compile(last, "<cell>", "eval"), _ns)
            if value is not None:
                _ns["_"] = value
                results.append(_represent(value, True))
    except BaseException as e:  # KeyboardInterrupt and SystemExit too: the context lives on
        tb = traceback.format_exception(type(e), e, e.__traceback__)
        # Drop the driver's own frames from the traceback.
        tb = [line for line in tb if 'python_driver.py' not in line]
        error = {"name": type(e).__name__, "value": str(e), "traceback": "".join(tb)}
    results = _open_figures() + results
    sys.stdout.flush()
    sys.stderr.flush()
    done = {"event": "done", "execution_count": _count, "results": results, "error": error}
    if want_locals:
        done["locals"] = _user_locals()
    _send(done)


def _main():
    payload = os.environ.pop("SANDPIT_CONTEXT_PAYLOAD", None)
    if payload is not None:
        # JSON text: a string, an object or an array.
        try:
            value = json.loads(payload)
        except ValueError:
            value = payload

        _ns["context"] = value
        _initial.add("context")
    sys.stdout = _Stream("stdout")
    sys.stderr = _Stream("stderr")
    _send({"event": "ready", "version": sys.version.split()[0]})
    buf = b""
    while True:
        try:
            chunk = _req.readline()
        except KeyboardInterrupt:
            continue
        if not chunk:
            return
        buf += chunk
        if not buf.endswith(b"\n"):
            continue
        req, buf = json.loads(buf), b""
        _run(req.get("code", ""), bool(req.get("locals")))


_main()
