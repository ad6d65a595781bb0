//! Code interpreter: stateful Python and JavaScript contexts (`/v1/sandboxes/{id}/contexts`)
//! and `POST /v1/sandboxes/{id}/code`: state that persists between runs, results and rich
//! reprs, output, errors, timeouts, crashes and restarts, `locals`, the `context` payload,
//! and the SSE form of a run.

mod common;

use base64::Engine;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

fn contexts_path(id: &str) -> String {
    format!("/v1/sandboxes/{id}/contexts")
}

fn code_path(id: &str) -> String {
    format!("/v1/sandboxes/{id}/code")
}

/// `POST /v1/sandboxes/{id}/contexts`; asserts 201 and the Context shape.
#[track_caller]
fn create_context(server: &Server, id: &str, body: &Value) -> Value {
    let r = server.request_json(Method::POST, &contexts_path(id), body);
    r.expect(201);
    let c = r.json();
    assert_context_shape(&c);
    c
}

#[track_caller]
fn assert_context_shape(c: &Value) {
    assert!(
        c["id"].as_str().is_some_and(|s| !s.is_empty()),
        "context without id: {c}"
    );
    assert!(
        matches!(c["language"].as_str(), Some("python" | "javascript")),
        "context language: {c}"
    );
    assert!(c["cwd"].is_string(), "context cwd: {c}");
    assert!(c["pid"].is_i64(), "context pid: {c}");
    assert!(
        matches!(c["status"].as_str(), Some("running" | "exited")),
        "context status: {c}"
    );
    assert!(c["version"].is_string(), "context version: {c}");
    assert!(
        c["created_at"].as_str().and_then(parse_utc).is_some(),
        "context created_at: {c}"
    );
}

/// `GET /v1/sandboxes/{id}/contexts/{cid}`; asserts 200.
#[track_caller]
fn get_context(server: &Server, id: &str, cid: &str) -> Value {
    let r = server.request(Method::GET, &format!("{}/{cid}", contexts_path(id)));
    r.expect(200);
    let c = r.json();
    assert_context_shape(&c);
    c
}

/// Ids from `GET /v1/sandboxes/{id}/contexts`.
#[track_caller]
fn context_ids(server: &Server, id: &str) -> Vec<String> {
    let r = server.request(Method::GET, &contexts_path(id));
    r.expect(200);
    let v = r.json();
    v["contexts"]
        .as_array()
        .unwrap_or_else(|| panic!("no contexts array: {v}"))
        .iter()
        .map(|c| {
            assert_context_shape(c);
            c["id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// `POST /v1/sandboxes/{id}/code` with any body; the raw answer.
#[track_caller]
fn run_resp(server: &Server, id: &str, body: &Value) -> Resp {
    server.request_json(Method::POST, &code_path(id), body)
}

/// A code run with a full body; asserts 200 and the documented result shape.
#[track_caller]
fn run_json(server: &Server, id: &str, body: &Value) -> Value {
    let r = run_resp(server, id, body);
    r.expect(200);
    let v = r.json();
    assert!(v["stdout"].is_string(), "run without stdout: {v}");
    assert!(v["stderr"].is_string(), "run without stderr: {v}");
    assert!(v["timed_out"].is_boolean(), "run without timed_out: {v}");
    assert!(v["truncated"].is_boolean(), "run without truncated: {v}");
    assert!(
        v["error"].is_null() || v["error"].is_object(),
        "run error: {v}"
    );
    let results = v["results"]
        .as_array()
        .unwrap_or_else(|| panic!("run without results: {v}"));
    for res in results {
        assert!(
            res["text/plain"].is_string(),
            "result without text/plain: {v}"
        );
        assert!(
            res["is_main_result"].is_boolean(),
            "result without is_main_result: {v}"
        );
    }
    v
}

/// Runs Python code in context `cid` (`None`: the default context).
#[track_caller]
fn run(server: &Server, id: &str, cid: Option<&str>, code: &str) -> Value {
    let mut body = json!({ "code": code });
    if let Some(cid) = cid {
        body["context"] = json!(cid);
    }
    run_json(server, id, &body)
}

/// Runs code, asserts no error and no timeout.
#[track_caller]
fn run_ok(server: &Server, id: &str, cid: Option<&str>, code: &str) -> Value {
    let v = run(server, id, cid, code);
    assert!(
        v["error"].is_null() && v["timed_out"] == false,
        "`{code}` failed: {v}"
    );
    v
}

/// The main result of a run (the value of the last expression).
#[track_caller]
fn main_result(v: &Value) -> Value {
    let main: Vec<&Value> = v["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {v}"))
        .iter()
        .filter(|r| r["is_main_result"] == true)
        .collect();
    assert_eq!(main.len(), 1, "expected exactly one main result: {v}");
    main[0].clone()
}

/// `text/plain` of the main result of a successful run of `code`.
#[track_caller]
fn eval(server: &Server, id: &str, cid: Option<&str>, code: &str) -> String {
    let v = run_ok(server, id, cid, code);
    main_result(&v)["text/plain"]
        .as_str()
        .unwrap_or_else(|| panic!("main result without text/plain: {v}"))
        .to_string()
}

/// Asserts that base64 `data` decodes to a PNG image.
#[track_caller]
fn assert_png(data: &Value, context: &Value) {
    let b64 = data
        .as_str()
        .unwrap_or_else(|| panic!("image/png is not a string: {context}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .unwrap_or_else(|e| panic!("image/png is not base64 ({e}): {context}"));
    assert!(
        bytes.starts_with(PNG_SIGNATURE) && bytes.len() > 100,
        "image/png is not a PNG ({} bytes, starts {:?})",
        bytes.len(),
        &bytes[..bytes.len().min(8)]
    );
}

#[test]
fn state_persists_across_runs() {
    let server = Server::start();
    let id = server.new_sandbox();
    let first = run_ok(
        &server,
        &id,
        None,
        "x = 20\nimport json\ndef double(n):\n    return 2 * n\nclass Box:\n    def __init__(self, v):\n        self.v = v\n    def get(self):\n        return self.v",
    );
    // A run that ends in a statement has no result.
    assert_eq!(first["results"], json!([]), "{first}");
    assert_eq!(first["stdout"], "", "{first}");
    assert_eq!(eval(&server, &id, None, "double(x) + 2"), "42");
    assert_eq!(
        eval(&server, &id, None, "json.dumps({'a': [1, 2]})"),
        "'{\"a\": [1, 2]}'"
    );
    assert_eq!(eval(&server, &id, None, "Box(double(x)).get()"), "40");
    // A later run changes state that the next one sees.
    run_ok(&server, &id, None, "x += 1");
    assert_eq!(eval(&server, &id, None, "x"), "21");
    // An expression followed by a statement is not a result either.
    let v = run_ok(&server, &id, None, "x * 2\ny = 3");
    assert_eq!(v["results"], json!([]), "{v}");
    // `None` as the last expression gives no result.
    let v = run_ok(&server, &id, None, "print('hi')");
    assert_eq!(v["results"], json!([]), "{v}");
    assert_eq!(v["stdout"], "hi\n", "{v}");
}

#[test]
fn execution_count_increments_per_run() {
    let server = Server::start();
    let id = server.new_sandbox();
    create_context(&server, &id, &json!({ "id": "n" }));
    let counts: Vec<i64> = ["1", "a = 1", "1 / 0", "a"]
        .iter()
        .map(|code| {
            let v = run(&server, &id, Some("n"), code);
            v["execution_count"]
                .as_i64()
                .unwrap_or_else(|| panic!("no execution_count: {v}"))
        })
        .collect();
    assert!(counts[0] >= 1, "{counts:?}");
    for w in counts.windows(2) {
        assert_eq!(w[1], w[0] + 1, "execution counts {counts:?}");
    }
}

#[test]
fn stdout_and_stderr_are_captured_separately_and_in_order() {
    let server = Server::start();
    let id = server.new_sandbox();
    let v = run_ok(
        &server,
        &id,
        None,
        "import sys\nprint('out 1')\nprint('err 1', file=sys.stderr)\nprint('out 2')\nsys.stderr.write('err 2\\n')\n'value'",
    );
    assert_eq!(v["stdout"], "out 1\nout 2\n", "{v}");
    assert_eq!(v["stderr"], "err 1\nerr 2\n", "{v}");
    assert_eq!(main_result(&v)["text/plain"], "'value'", "{v}");

    // The interleaving across the two streams is kept in the event stream.
    let events = SseStream::open(
        server
            .req(Method::POST, &code_path(&id))
            .timeout(Duration::from_secs(60))
            .json(&json!({
                "code": "import sys\nprint('a')\nprint('b', file=sys.stderr)\nprint('c')\nprint('d', file=sys.stderr)"
            })),
    )
    .collect_all();
    let mut chunks: Vec<(String, String)> = Vec::new();
    for e in &events {
        if e.name == "stdout" || e.name == "stderr" {
            let data = e.data["data"]
                .as_str()
                .unwrap_or_else(|| panic!("output event without data: {events:?}"));
            match chunks.last_mut() {
                Some((name, text)) if *name == e.name => text.push_str(data),
                _ => chunks.push((e.name.clone(), data.to_string())),
            }
        }
    }
    let expected: Vec<(String, String)> = [
        ("stdout", "a\n"),
        ("stderr", "b\n"),
        ("stdout", "c\n"),
        ("stderr", "d\n"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(chunks, expected, "{events:?}");
}

#[test]
fn rich_reprs_html_markdown_svg_json() {
    let server = Server::start();
    let id = server.new_sandbox();
    run_ok(
        &server,
        &id,
        None,
        r#"
class Rich:
    def __repr__(self):
        return 'Rich()'
    def _repr_html_(self):
        return '<b>bold</b>'
    def _repr_markdown_(self):
        return '# Title'
    def _repr_svg_(self):
        return '<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"></svg>'
    def _repr_json_(self):
        return {'k': [1, 2]}
class OnlyHtml:
    def _repr_html_(self):
        return '<table><tr><td>1</td></tr></table>'
"#,
    );
    let v = run_ok(&server, &id, None, "Rich()");
    let r = main_result(&v);
    assert_eq!(r["text/plain"], "Rich()", "{v}");
    assert_eq!(r["text/html"], "<b>bold</b>", "{v}");
    assert_eq!(r["text/markdown"], "# Title", "{v}");
    assert!(
        r["image/svg+xml"]
            .as_str()
            .is_some_and(|s| s.starts_with("<svg") && s.ends_with("</svg>")),
        "{v}"
    );
    let j = &r["application/json"];
    assert!(
        *j == json!({ "k": [1, 2] })
            || j.as_str()
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
                .is_some_and(|p| p == json!({ "k": [1, 2] })),
        "application/json: {v}"
    );
    let v = run_ok(&server, &id, None, "OnlyHtml()");
    let r = main_result(&v);
    assert_eq!(r["text/html"], "<table><tr><td>1</td></tr></table>", "{v}");
    assert!(r.get("text/markdown").is_none(), "{v}");
    // A plain value has only text/plain.
    let v = run_ok(&server, &id, None, "[1, 'a']");
    let r = main_result(&v);
    assert_eq!(r["text/plain"], "[1, 'a']", "{v}");
    assert!(r.get("text/html").is_none(), "{v}");
    assert!(r.get("image/png").is_none(), "{v}");
}

#[test]
fn matplotlib_figures_come_back_as_png() {
    let server = Server::start();
    let id = server.new_sandbox();
    let v = run_ok(
        &server,
        &id,
        None,
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()",
    );
    let pngs: Vec<&Value> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("image/png").is_some())
        .collect();
    assert_eq!(pngs.len(), 1, "plt.show() should give one image: {v}");
    assert_png(&pngs[0]["image/png"], &v);

    // A figure as the value of the last expression is an image too.
    let v = run_ok(
        &server,
        &id,
        None,
        "fig, ax = plt.subplots()\nax.bar(['a', 'b'], [3, 5])\nfig",
    );
    let r = main_result(&v);
    assert!(
        r.get("image/png").is_some(),
        "figure result without PNG: {v}"
    );
    assert_png(&r["image/png"], &v);

    // Shown figures are closed: a run without plotting has no image.
    let v = run_ok(&server, &id, None, "1 + 1");
    assert!(
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.get("image/png").is_none()),
        "{v}"
    );
}

#[test]
fn error_has_a_traceback_and_the_context_survives() {
    let server = Server::start();
    let id = server.new_sandbox();
    run_ok(&server, &id, None, "kept = 'still here'");
    let v = run(
        &server,
        &id,
        None,
        "print('before')\na = 1\nb = a / 0\nprint('after')",
    );
    let err = &v["error"];
    assert_eq!(err["name"], "ZeroDivisionError", "{v}");
    assert!(
        err["value"]
            .as_str()
            .is_some_and(|s| s.contains("division")),
        "{v}"
    );
    let tb = err["traceback"].as_str().unwrap_or_else(|| panic!("{v}"));
    assert!(tb.contains("line 3"), "traceback without the line: {v}");
    assert!(tb.contains("ZeroDivisionError"), "{v}");
    assert_eq!(v["stdout"], "before\n", "{v}");
    assert_eq!(v["timed_out"], false, "{v}");
    assert_eq!(v["results"], json!([]), "{v}");
    // The context works and keeps its state, including what ran before the error.
    assert_eq!(eval(&server, &id, None, "kept"), "'still here'");
    assert_eq!(eval(&server, &id, None, "a"), "1");
    // A syntax error is an error too, and leaves the context usable.
    let v = run(&server, &id, None, "def broken(:\n    pass");
    assert_eq!(v["error"]["name"], "SyntaxError", "{v}");
    let v = run(&server, &id, None, "undefined_name");
    assert_eq!(v["error"]["name"], "NameError", "{v}");
    assert_eq!(eval(&server, &id, None, "kept"), "'still here'");
}

#[test]
fn timeout_interrupts_and_keeps_state() {
    let server = Server::start();
    let id = server.new_sandbox();
    run_ok(&server, &id, None, "before = 'set before'");
    let started = Instant::now();
    let v = run_json(
        &server,
        &id,
        &json!({ "code": "print('looping')\nwhile True: pass", "timeout_ms": 1000 }),
    );
    let took = started.elapsed();
    assert_eq!(v["timed_out"], true, "{v}");
    assert_eq!(v["error"]["name"], "KeyboardInterrupt", "{v}");
    assert_eq!(v["stdout"], "looping\n", "{v}");
    assert!(
        took >= Duration::from_millis(900),
        "returned before its timeout ({took:?}): {v}"
    );
    assert!(took < Duration::from_secs(15), "interrupt took {took:?}");
    assert_eq!(eval(&server, &id, None, "before"), "'set before'");
    let v = run_ok(&server, &id, None, "after = 1");
    assert_eq!(v["timed_out"], false, "{v}");
}

#[test]
fn javascript_context() {
    let server = Server::start();
    let id = server.new_sandbox();
    let c = create_context(
        &server,
        &id,
        &json!({ "id": "js", "language": "javascript" }),
    );
    assert_eq!(c["language"], "javascript", "{c}");
    assert_eq!(c["status"], "running", "{c}");
    let v = run_ok(&server, &id, Some("js"), "let n = 41;");
    assert_eq!(v["results"], json!([]), "{v}");
    assert_eq!(eval(&server, &id, Some("js"), "n + 1"), "42");
    run_ok(
        &server,
        &id,
        Some("js"),
        "n = n * 2; function sq(a) { return a * a; }",
    );
    assert_eq!(eval(&server, &id, Some("js"), "sq(n)"), "6724");
    let v = run_ok(
        &server,
        &id,
        Some("js"),
        "console.log('hello', 1); console.error('oops'); 'done'",
    );
    assert_eq!(v["stdout"], "hello 1\n", "{v}");
    assert_eq!(v["stderr"], "oops\n", "{v}");
    assert_eq!(main_result(&v)["text/plain"], "'done'", "{v}");
    let v = run(&server, &id, Some("js"), "throw new Error('boom')");
    assert_eq!(v["error"]["name"], "Error", "{v}");
    assert!(
        v["error"]["value"]
            .as_str()
            .is_some_and(|s| s.contains("boom")),
        "{v}"
    );
    let v = run(&server, &id, Some("js"), "null.x");
    assert_eq!(v["error"]["name"], "TypeError", "{v}");
    // The context survives its errors.
    assert_eq!(eval(&server, &id, Some("js"), "n"), "82");
}

#[test]
fn default_contexts_are_created_on_first_use() {
    let server = Server::start();
    let id = server.new_sandbox();
    assert!(context_ids(&server, &id).is_empty());
    run_ok(&server, &id, None, "py_state = 7");
    let v = run_ok(&server, &id, None, "import sys\nsys.version_info.major");
    assert_eq!(main_result(&v)["text/plain"], "3", "{v}");
    assert_eq!(eval(&server, &id, None, "py_state"), "7");
    let ids = context_ids(&server, &id);
    assert_eq!(ids, vec!["default-python".to_string()]);
    let c = get_context(&server, &id, "default-python");
    assert_eq!(c["language"], "python", "{c}");
    assert_eq!(c["status"], "running", "{c}");

    let js = |code: &str| {
        run_json(
            &server,
            &id,
            &json!({ "code": code, "language": "javascript" }),
        )
    };
    let v = js("let jsState = 'kept'; typeof process");
    assert!(v["error"].is_null(), "{v}");
    assert_eq!(main_result(&v)["text/plain"], "'object'", "{v}");
    let v = js("jsState");
    assert_eq!(main_result(&v)["text/plain"], "'kept'", "{v}");
    assert!(context_ids(&server, &id).contains(&"default-javascript".to_string()));
    // The two default contexts do not share state.
    let v = run(&server, &id, Some("default-python"), "jsState");
    assert_eq!(v["error"]["name"], "NameError", "{v}");
    // Unknown language in a run.
    run_resp(&server, &id, &json!({ "code": "1", "language": "cobol" }))
        .expect_error(400, "bad_request");
}

#[test]
fn locals_returns_user_defined_names_only() {
    let server = Server::start();
    let id = server.new_sandbox();
    run_ok(
        &server,
        &id,
        None,
        "a = 1\n_hidden = 2\nimport json\nimport collections.abc as cabc",
    );
    // Sets `_` to the last result.
    run_ok(&server, &id, None, "a + 1");
    let v = run_json(
        &server,
        &id,
        &json!({
            "code": "s = 'text'\ndef f(): pass\nclass K: pass\nitems = [1, 2]",
            "locals": true
        }),
    );
    assert!(v["error"].is_null(), "{v}");
    let locals = v["locals"]
        .as_object()
        .unwrap_or_else(|| panic!("no locals object: {v}"));
    let names: BTreeSet<&str> = locals.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = ["a", "s", "f", "K", "items"].into_iter().collect();
    assert_eq!(names, expected, "{v}");
    assert_eq!(locals["a"], "1", "{v}");
    assert_eq!(locals["s"], "'text'", "{v}");
    assert_eq!(locals["items"], "[1, 2]", "{v}");
    assert!(
        locals["f"]
            .as_str()
            .is_some_and(|r| r.starts_with("<function f")),
        "{v}"
    );
    assert!(locals["K"].as_str().is_some_and(|r| r.contains("K")), "{v}");
    // Without `locals: true` the answer has none.
    let v = run_ok(&server, &id, None, "b = 2");
    assert!(v.get("locals").is_none_or(Value::is_null), "{v}");
    // Locals come with an error too (RLM loops inspect state after a failure).
    let v = run_json(
        &server,
        &id,
        &json!({ "code": "c = 3\n1 / 0", "locals": true }),
    );
    assert_eq!(v["error"]["name"], "ZeroDivisionError", "{v}");
    assert_eq!(v["locals"]["c"], "3", "{v}");
    assert_eq!(v["locals"]["b"], "2", "{v}");
}

#[test]
fn context_payload_string_object_and_array() {
    let server = Server::start();
    let id = server.new_sandbox();
    create_context(
        &server,
        &id,
        &json!({ "id": "s", "context": "a long document\nwith two lines" }),
    );
    assert_eq!(
        eval(&server, &id, Some("s"), "context"),
        "'a long document\\nwith two lines'"
    );
    assert_eq!(
        eval(&server, &id, Some("s"), "len(context.splitlines())"),
        "2"
    );

    create_context(
        &server,
        &id,
        &json!({ "id": "o", "context": { "q": "what is 6*7?", "n": [1, 2, 3], "nested": { "k": true } } }),
    );
    assert_eq!(
        eval(&server, &id, Some("o"), "context['q']"),
        "'what is 6*7?'"
    );
    assert_eq!(eval(&server, &id, Some("o"), "sum(context['n'])"), "6");
    assert_eq!(
        eval(&server, &id, Some("o"), "context['nested']['k']"),
        "True"
    );
    assert_eq!(
        eval(&server, &id, Some("o"), "type(context).__name__"),
        "'dict'"
    );

    create_context(&server, &id, &json!({ "id": "a", "context": [10, "two"] }));
    assert_eq!(eval(&server, &id, Some("a"), "context[1]"), "'two'");
    assert_eq!(
        eval(&server, &id, Some("a"), "type(context).__name__"),
        "'list'"
    );

    // JavaScript gets the payload as well.
    create_context(
        &server,
        &id,
        &json!({ "id": "j", "language": "javascript", "context": { "q": "hi" } }),
    );
    assert_eq!(eval(&server, &id, Some("j"), "context.q"), "'hi'");

    // A context without a payload has no `context` variable.
    create_context(&server, &id, &json!({ "id": "none" }));
    let v = run(&server, &id, Some("none"), "context");
    assert_eq!(v["error"]["name"], "NameError", "{v}");

    // Numbers are not a valid payload.
    server
        .request_json(Method::POST, &contexts_path(&id), &json!({ "context": 5 }))
        .expect_error(400, "bad_request");
}

#[test]
fn context_string_that_looks_like_json_stays_a_string() {
    let server = Server::start();
    let id = server.new_sandbox();
    for (cid, payload) in [("arr", "[1, 2]"), ("obj", "{\"q\": 1}")] {
        create_context(&server, &id, &json!({ "id": cid, "context": payload }));
        assert_eq!(
            eval(&server, &id, Some(cid), "type(context).__name__"),
            "'str'",
            "the string payload {payload:?} was not kept as a string"
        );
        assert_eq!(
            eval(&server, &id, Some(cid), "context"),
            format!("'{payload}'")
        );
    }
}

#[test]
fn crash_then_not_running_then_restart() {
    let server = Server::start();
    let id = server.new_sandbox();
    let c = create_context(&server, &id, &json!({ "id": "c" }));
    let old_pid = c["pid"].as_i64().unwrap();
    run_ok(&server, &id, Some("c"), "x = 1");
    let v = run(&server, &id, Some("c"), "import os\nos._exit(3)");
    assert_eq!(v["error"]["name"], "ContextDied", "{v}");
    assert_eq!(v["timed_out"], false, "{v}");
    assert_eq!(get_context(&server, &id, "c")["status"], "exited");
    run_resp(&server, &id, &json!({ "code": "x", "context": "c" }))
        .expect_error(409, "not_running");
    // Other contexts are not affected.
    assert_eq!(eval(&server, &id, None, "'fine'"), "'fine'");

    let r = server.request(Method::POST, &format!("{}/c/restart", contexts_path(&id)));
    r.expect(200);
    let c = r.json();
    assert_context_shape(&c);
    assert_eq!(c["id"], "c", "{c}");
    assert_eq!(c["status"], "running", "{c}");
    assert_ne!(c["pid"].as_i64().unwrap(), old_pid, "{c}");
    // A fresh interpreter: state is gone, code runs again.
    let v = run(&server, &id, Some("c"), "x");
    assert_eq!(v["error"]["name"], "NameError", "{v}");
    assert_eq!(eval(&server, &id, Some("c"), "6 * 7"), "42");

    // Restart of a running context also loses its state.
    run_ok(&server, &id, Some("c"), "y = 5");
    server
        .request(Method::POST, &format!("{}/c/restart", contexts_path(&id)))
        .expect(200);
    let v = run(&server, &id, Some("c"), "y");
    assert_eq!(v["error"]["name"], "NameError", "{v}");
    server
        .request(
            Method::POST,
            &format!("{}/nope/restart", contexts_path(&id)),
        )
        .expect_error(404, "not_found");
}

#[test]
fn contexts_create_list_get_delete() {
    let server = Server::start();
    let id = server.new_sandbox();
    let c1 = create_context(&server, &id, &json!({ "id": "c1" }));
    assert_eq!(c1["id"], "c1", "{c1}");
    assert_eq!(c1["language"], "python", "{c1}");
    assert_eq!(c1["status"], "running", "{c1}");
    assert!(c1["pid"].as_i64().unwrap() > 0, "{c1}");
    assert!(
        c1["version"].as_str().is_some_and(|s| s.starts_with('3')),
        "{c1}"
    );
    let created = parse_utc(c1["created_at"].as_str().unwrap()).unwrap();
    assert!((created - now_unix()).abs() < 300.0, "{c1}");

    let c2 = create_context(
        &server,
        &id,
        &json!({ "language": "javascript", "cwd": "/tmp", "env": { "GREETING": "hey" } }),
    );
    let c2_id = c2["id"].as_str().unwrap().to_string();
    assert_ne!(c2_id, "c1");
    assert_eq!(c2["language"], "javascript", "{c2}");
    assert_eq!(c2["cwd"], "/tmp", "{c2}");
    assert_eq!(
        eval(
            &server,
            &id,
            Some(&c2_id),
            "process.cwd() + ' ' + process.env.GREETING"
        ),
        "'/tmp hey'"
    );

    // Errors on create.
    server
        .request_json(Method::POST, &contexts_path(&id), &json!({ "id": "c1" }))
        .expect_error(409, "already_exists");
    server
        .request_json(
            Method::POST,
            &contexts_path(&id),
            &json!({ "language": "ruby" }),
        )
        .expect_error(400, "bad_request");
    server
        .request_json(
            Method::POST,
            &contexts_path(&id),
            &json!({ "id": "bad id!" }),
        )
        .expect_error(400, "invalid_id");

    let mut ids = context_ids(&server, &id);
    ids.sort();
    let mut want = vec!["c1".to_string(), c2_id.clone()];
    want.sort();
    assert_eq!(ids, want);
    let got = get_context(&server, &id, "c1");
    assert_eq!(got["id"], "c1");
    assert_eq!(got["pid"], c1["pid"]);
    assert_eq!(got["created_at"], c1["created_at"]);

    // Delete: gone from get, list and runs, and its interpreter is gone.
    let pid = c1["pid"].as_i64().unwrap() as u32;
    server
        .request(Method::DELETE, &format!("{}/c1", contexts_path(&id)))
        .expect(204);
    server
        .request(Method::GET, &format!("{}/c1", contexts_path(&id)))
        .expect_error(404, "not_found");
    server
        .request(Method::DELETE, &format!("{}/c1", contexts_path(&id)))
        .expect_error(404, "not_found");
    assert_eq!(context_ids(&server, &id), vec![c2_id.clone()]);
    run_resp(&server, &id, &json!({ "code": "1", "context": "c1" })).expect_error(404, "not_found");
    assert_pid_gone(&server, &id, pid);
    // The id can be used again, for a fresh context.
    create_context(&server, &id, &json!({ "id": "c1" }));
}

#[test]
fn two_contexts_are_isolated() {
    let server = Server::start();
    let id = server.new_sandbox();
    create_context(&server, &id, &json!({ "id": "left" }));
    create_context(&server, &id, &json!({ "id": "right" }));
    run_ok(&server, &id, Some("left"), "v = 'left value'\nimport json");
    run_ok(&server, &id, Some("right"), "v = 'right value'");
    assert_eq!(eval(&server, &id, Some("left"), "v"), "'left value'");
    assert_eq!(eval(&server, &id, Some("right"), "v"), "'right value'");
    let v = run(&server, &id, Some("right"), "json");
    assert_eq!(v["error"]["name"], "NameError", "{v}");
    let v = run(&server, &id, None, "v");
    assert_eq!(v["error"]["name"], "NameError", "{v}");
    // Deleting one leaves the other alone.
    server
        .request(Method::DELETE, &format!("{}/left", contexts_path(&id)))
        .expect(204);
    assert_eq!(eval(&server, &id, Some("right"), "v"), "'right value'");
}

#[test]
fn sse_streams_stdout_before_the_result() {
    let server = Server::start();
    let id = server.new_sandbox();
    run_ok(&server, &id, None, "import time");
    let events = SseStream::open(
        server
            .req(Method::POST, &code_path(&id))
            .timeout(Duration::from_secs(60))
            .json(&json!({
                "code": "print('first')\ntime.sleep(0.5)\nprint('second')\n'end'"
            })),
    )
    .collect_all();
    assert!(events.len() >= 3, "{events:?}");
    assert_eq!(events[0].name, "start", "{events:?}");
    let last = events.last().unwrap();
    assert_eq!(last.name, "result", "{events:?}");
    assert_eq!(
        events.iter().filter(|e| e.name == "result").count(),
        1,
        "{events:?}"
    );
    let first_out = events
        .iter()
        .position(|e| e.name == "stdout")
        .unwrap_or_else(|| panic!("no stdout event: {events:?}"));
    let gap = last.at.duration_since(events[first_out].at);
    assert!(
        gap >= Duration::from_millis(300),
        "stdout was not streamed: first stdout only {gap:?} before the result: {events:?}"
    );
    let out: String = events
        .iter()
        .filter(|e| e.name == "stdout")
        .map(|e| e.data["data"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(out, "first\nsecond\n", "{events:?}");
    // The result event: the JSON answer minus stdout, stderr and truncated.
    let result = &last.data;
    assert!(result["error"].is_null(), "{result}");
    assert_eq!(result["timed_out"], false, "{result}");
    assert!(result["execution_count"].is_i64(), "{result}");
    assert_eq!(main_result(result)["text/plain"], "'end'", "{result}");
    for key in ["stdout", "stderr", "truncated"] {
        assert!(result.get(key).is_none(), "result has {key}: {result}");
    }

    // An error is reported in the result event.
    let events = SseStream::open(
        server
            .req(Method::POST, &code_path(&id))
            .timeout(Duration::from_secs(60))
            .json(&json!({ "code": "raise ValueError('bad')" })),
    )
    .collect_all();
    let last = events.last().unwrap();
    assert_eq!(last.name, "result", "{events:?}");
    assert_eq!(last.data["error"]["name"], "ValueError", "{events:?}");
}

#[test]
fn unknown_context_or_sandbox_is_404() {
    let server = Server::start();
    let id = server.new_sandbox();
    run_resp(
        &server,
        &id,
        &json!({ "code": "1", "context": "no-such-context" }),
    )
    .expect_error(404, "not_found");
    server
        .request(
            Method::GET,
            &format!("{}/no-such-context", contexts_path(&id)),
        )
        .expect_error(404, "not_found");
    server
        .request(
            Method::DELETE,
            &format!("{}/no-such-context", contexts_path(&id)),
        )
        .expect_error(404, "not_found");
    // Looking it up did not create it.
    assert!(context_ids(&server, &id).is_empty());

    let missing = "sb-doesnotexist";
    run_resp(&server, missing, &json!({ "code": "1" })).expect_error(404, "not_found");
    server
        .request(Method::GET, &contexts_path(missing))
        .expect_error(404, "not_found");
    server
        .request_json(Method::POST, &contexts_path(missing), &json!({}))
        .expect_error(404, "not_found");
}
