"""The unmodified ``e2b_code_interpreter`` SDK against sandpit's interpreter."""

from __future__ import annotations

import base64

import pytest
from e2b import NotFoundException


def test_state_survives_across_runs(interp):
    first = interp.run_code("x = 1")
    assert first.error is None
    second = interp.run_code("x + 1")
    assert second.text == "2"
    assert second.results[0].is_main_result
    assert second.execution_count and second.execution_count > (first.execution_count or 0)


def test_output_callbacks_and_logs(interp):
    seen = []
    ex = interp.run_code(
        "import sys\nprint('out line')\nprint('err line', file=sys.stderr)",
        on_stdout=lambda m: seen.append(("out", m.line)),
        on_stderr=lambda m: seen.append(("err", m.line)),
    )
    assert "".join(ex.logs.stdout) == "out line\n"
    assert "".join(ex.logs.stderr) == "err line\n"
    # Output streams as it is written (print writes the text, then the newline).
    assert "".join(t for k, t in seen if k == "out") == "out line\n"
    assert "".join(t for k, t in seen if k == "err") == "err line\n"


def test_errors_come_back_as_execution_errors(interp):
    errors = []
    ex = interp.run_code("1 / 0", on_error=errors.append)
    assert ex.error is not None
    assert ex.error.name == "ZeroDivisionError"
    assert "division by zero" in ex.error.value
    assert errors and errors[0].name == "ZeroDivisionError"
    # The context is still usable.
    assert interp.run_code("40 + 2").text == "42"


def test_matplotlib_png(interp):
    ex = interp.run_code(
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3])\nplt.show()"
    )
    assert ex.error is None, ex.error
    pngs = [r.png for r in ex.results if r.png]
    assert pngs, ex.results
    assert base64.b64decode(pngs[0]).startswith(b"\x89PNG")


def test_contexts(interp):
    ctx = interp.create_code_context(cwd="/tmp")
    assert ctx.language == "python" and ctx.cwd == "/tmp"
    interp.run_code("y = 'in ctx'", context=ctx)
    assert interp.run_code("y", context=ctx).text == "'in ctx'"
    # The default context does not see it.
    assert interp.run_code("y").error.name == "NameError"
    assert ctx.id in [c.id for c in interp.list_code_contexts()]
    interp.restart_code_context(ctx)
    assert interp.run_code("y", context=ctx).error.name == "NameError"
    interp.remove_code_context(ctx)
    assert ctx.id not in [c.id for c in interp.list_code_contexts()]
    with pytest.raises(NotFoundException):
        interp.remove_code_context(ctx.id)


def test_javascript(interp):
    ex = interp.run_code("const a = 20; a * 2 + 2", language="js")
    assert ex.error is None, ex.error
    assert ex.text == "42"


def test_base_sdk_still_works_on_an_interpreter_sandbox(interp):
    interp.files.write("/workspace/data.txt", "5")
    assert interp.run_code("int(open('/workspace/data.txt').read()) * 2").text == "10"
