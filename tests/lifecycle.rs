//! Sandbox lifecycle, keepalive and the error contract of the native API.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Asserts the documented Sandbox shape; returns `created_at` in Unix seconds.
#[track_caller]
fn assert_sandbox_shape(sb: &Value) -> f64 {
    let id = sb["id"].as_str().unwrap_or_else(|| panic!("no id: {sb}"));
    assert!(valid_id(id), "bad id {id:?}");
    let status = sb["status"].as_str().unwrap_or_default();
    assert!(
        ["starting", "running", "sleeping", "stopped"].contains(&status),
        "bad status in {sb}"
    );
    let created = sb["created_at"]
        .as_str()
        .and_then(parse_utc)
        .unwrap_or_else(|| panic!("created_at is not RFC 3339 UTC with Z: {sb}"));
    assert!(
        (created - now_unix()).abs() < 300.0,
        "created_at far from now: {sb}"
    );
    assert!(
        sb["last_active_at"].as_str().and_then(parse_utc).is_some(),
        "last_active_at is not RFC 3339 UTC with Z: {sb}"
    );
    assert!(
        sb["expires_at"].is_null() || sb["expires_at"].as_str().and_then(parse_utc).is_some(),
        "expires_at is neither null nor RFC 3339 UTC with Z: {sb}"
    );
    assert!(sb["keepalive_seconds"].is_u64(), "keepalive_seconds: {sb}");
    for key in ["memory_mb", "cpus", "pids"] {
        assert!(sb["limits"][key].is_number(), "limits.{key} missing: {sb}");
    }
    assert!(sb["network"].is_string(), "network: {sb}");
    assert!(sb["warnings"].is_array(), "warnings: {sb}");
    created
}

fn valid_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Seconds from now until the sandbox's `expires_at`.
#[track_caller]
fn expires_in(sb: &Value) -> f64 {
    let at = sb["expires_at"]
        .as_str()
        .and_then(parse_utc)
        .unwrap_or_else(|| panic!("expires_at is not a timestamp: {sb}"));
    at - now_unix()
}

/// The harness's timestamp parser, which the shape checks rely on, is itself right.
#[test]
fn timestamp_parser_self_check() {
    assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0.0));
    assert_eq!(parse_utc("2020-01-02T03:04:05Z"), Some(1_577_934_245.0));
    assert_eq!(parse_utc("2020-01-02T03:04:05.5Z"), Some(1_577_934_245.5));
    assert_eq!(parse_utc("2024-02-29T00:00:00Z"), Some(1_709_164_800.0));
    for bad in [
        "2020-01-02T03:04:05+00:00",
        "2020-01-02 03:04:05Z",
        "2020-01-02T03:04:05",
        "2020-13-02T03:04:05Z",
        "2020-01-02T03:04:05.Z",
        "1577934245",
    ] {
        assert_eq!(parse_utc(bad), None, "{bad}");
    }
}

#[test]
fn health_reports_ok_and_version() {
    let server = Server::start();
    let r = server.request(Method::GET, "/health");
    r.expect(200);
    let v = r.json();
    assert_eq!(v["status"], "ok", "{v}");
    assert!(v["version"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
}

#[test]
fn create_with_explicit_id() {
    let server = Server::start();
    let id = unique("alpha");
    let sb = server.create(&json!({ "id": id, "keepalive_seconds": 600 }));
    assert_eq!(sb["id"], id.as_str());
    assert_sandbox_shape(&sb);
    assert_eq!(sb["keepalive_seconds"], 600);
    let left = expires_in(&sb);
    assert!((570.0..=630.0).contains(&left), "expires in {left} s: {sb}");
    assert_eq!(sb["network"], "none", "{sb}");

    // The sandbox is usable, then reported as running.
    assert_eq!(server.run_ok(&id, "echo hi"), "hi\n");
    let got = server.sandbox(&id);
    assert_eq!(got["id"], id.as_str());
    assert_eq!(got["status"], "running", "{got}");
    assert_eq!(got["created_at"], sb["created_at"], "{got}");
    assert_sandbox_shape(&got);
}

#[test]
fn create_without_id_generates_one() {
    let server = Server::start();
    let a = server.create(&json!({}));
    let b = server.create(&json!({}));
    assert_sandbox_shape(&a);
    assert_sandbox_shape(&b);
    let (ida, idb) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    assert_ne!(ida, idb);
    for id in [ida, idb] {
        // Documented form: "sb-" + 12 random lowercase alphanumerics.
        let rest = id.strip_prefix("sb-").unwrap_or_else(|| panic!("{id}"));
        assert_eq!(rest.len(), 12, "{id}");
        assert!(
            rest.bytes()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()),
            "{id}"
        );
        assert_eq!(server.run_ok(id, "echo ok"), "ok\n");
    }
}

#[test]
fn duplicate_id_conflicts() {
    let server = Server::start();
    let id = unique("dup");
    server.create(&json!({ "id": id }));
    server
        .request_json(Method::POST, "/v1/sandboxes", &json!({ "id": id }))
        .expect_error(409, "already_exists");
    // The first one is untouched.
    assert_eq!(server.run_ok(&id, "echo still"), "still\n");
    assert_eq!(server.list_ids().iter().filter(|x| **x == id).count(), 1);
}

#[test]
fn invalid_ids_are_rejected() {
    let server = Server::start();
    let too_long = "a".repeat(64);
    for bad in ["a b", "../x", too_long.as_str(), "", "x/y", "é", "a.b"] {
        server
            .request_json(Method::POST, "/v1/sandboxes", &json!({ "id": bad }))
            .expect_error(400, "invalid_id");
    }
    assert!(server.list_ids().is_empty(), "a bad id created a sandbox");
    // 63 characters of the allowed alphabet are fine.
    let longest = format!("A_-{}", "z9".repeat(30));
    assert_eq!(longest.len(), 63);
    assert_eq!(server.create(&json!({ "id": longest }))["id"], longest);
}

#[test]
fn get_list_delete() {
    let server = Server::start();
    let a = unique("a");
    let b = unique("b");
    server.create(&json!({ "id": a }));
    server.create(&json!({ "id": b }));

    let r = server.request(Method::GET, "/v1/sandboxes");
    r.expect(200);
    let list = r.json();
    let sandboxes = list["sandboxes"].as_array().expect("sandboxes array");
    assert_eq!(sandboxes.len(), 2, "{list}");
    for sb in sandboxes {
        assert_sandbox_shape(sb);
    }
    let mut ids = server.list_ids();
    ids.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(ids, want);

    server.delete_sandbox(&a);
    server
        .request(Method::GET, &format!("/v1/sandboxes/{a}"))
        .expect_error(404, "not_found");
    server
        .request(Method::DELETE, &format!("/v1/sandboxes/{a}"))
        .expect_error(404, "not_found");
    assert_eq!(server.list_ids(), vec![b.clone()]);
    assert_eq!(server.run_ok(&b, "echo b"), "b\n");

    // The id is free again.
    server.create(&json!({ "id": a }));
    assert_eq!(server.run_ok(&a, "echo again"), "again\n");
}

#[test]
fn unknown_sandbox_is_404_on_every_route() {
    let server = Server::start();
    let id = "no-such-sandbox";
    let sb = format!("/v1/sandboxes/{id}");
    let file = |route: &str| Server::files_path(id, route, "/workspace/a.txt");
    let cases: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, sb.clone(), None),
        (
            Method::PATCH,
            sb.clone(),
            Some(json!({ "keepalive_seconds": 60 })),
        ),
        (Method::POST, format!("{sb}/keepalive"), None),
        (Method::DELETE, sb.clone(), None),
        (
            Method::POST,
            format!("{sb}/exec"),
            Some(json!({ "command": "true" })),
        ),
        (Method::GET, file(""), None),
        (Method::DELETE, file(""), None),
        (
            Method::GET,
            Server::files_path(id, "/list", "/workspace"),
            None,
        ),
        (Method::GET, file("/stat"), None),
        (
            Method::POST,
            format!("{sb}/files/mkdir"),
            Some(json!({ "path": "/workspace/d" })),
        ),
        (
            Method::POST,
            format!("{sb}/files/move"),
            Some(json!({ "from": "/workspace/a", "to": "/workspace/b" })),
        ),
    ];
    for (method, path, body) in cases {
        let rb = server.req(method.clone(), &path);
        let rb = match body {
            Some(b) => rb.json(&b),
            None => rb,
        };
        let r = server.send(rb);
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
        r.expect_error(404, "not_found");
    }
    server
        .request_bytes(Method::PUT, &file(""), b"x".to_vec())
        .expect_error(404, "not_found");
}

#[test]
fn malformed_json_is_invalid_json() {
    let server = Server::start();
    let bad = |path: &str, body: &str| {
        server.send(
            server
                .req(Method::POST, path)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
    };
    bad("/v1/sandboxes", "{\"id\": ").expect_error(400, "invalid_json");
    bad("/v1/sandboxes", "not json at all").expect_error(400, "invalid_json");
    assert!(server.list_ids().is_empty());

    let id = server.new_sandbox();
    bad(&format!("/v1/sandboxes/{id}/exec"), "{\"command\": [").expect_error(400, "invalid_json");

    // Well-formed JSON of the wrong type is a client error too.
    let r = server.request_json(
        Method::POST,
        "/v1/sandboxes",
        &json!({ "keepalive_seconds": "ten" }),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let code = r.json()["error"]["code"].clone();
    assert!(
        code == "invalid_json" || code == "bad_request",
        "code {code}"
    );
}

#[test]
fn unknown_route_and_wrong_method() {
    let server = Server::start();
    server
        .request(Method::GET, "/v1/nope")
        .expect_error(404, "route_not_found");
    server
        .request(Method::GET, "/definitely/not/here")
        .expect_error(404, "route_not_found");
    server
        .request(Method::PUT, "/v1/sandboxes")
        .expect_error(405, "method_not_allowed");
}

#[test]
fn patch_keepalive_recomputes_expiry() {
    let server = Server::start();
    let sb = server.create(&json!({ "keepalive_seconds": 600 }));
    let id = sb["id"].as_str().unwrap();
    let r = server.request_json(
        Method::PATCH,
        &format!("/v1/sandboxes/{id}"),
        &json!({ "keepalive_seconds": 3600 }),
    );
    r.expect(200);
    let patched = r.json();
    assert_sandbox_shape(&patched);
    assert_eq!(patched["keepalive_seconds"], 3600, "{patched}");
    let left = expires_in(&patched);
    assert!((3570.0..=3630.0).contains(&left), "{left}: {patched}");
    let got = server.sandbox(id);
    assert_eq!(got["expires_at"], patched["expires_at"]);
    assert_eq!(got["keepalive_seconds"], 3600);

    // 0 means no expiry.
    let r = server.request_json(
        Method::PATCH,
        &format!("/v1/sandboxes/{id}"),
        &json!({ "keepalive_seconds": 0 }),
    );
    r.expect(200);
    let v = r.json();
    assert!(v["expires_at"].is_null(), "{v}");
    assert_eq!(v["keepalive_seconds"], 0, "{v}");
    assert!(server.sandbox(id)["expires_at"].is_null());
}

#[test]
fn keepalive_zero_at_create_means_no_expiry() {
    let server = Server::start();
    let sb = server.create(&json!({ "keepalive_seconds": 0 }));
    assert!(sb["expires_at"].is_null(), "{sb}");
    assert_eq!(sb["keepalive_seconds"], 0);
    let id = sb["id"].as_str().unwrap();
    assert!(server.sandbox(id)["expires_at"].is_null());
}

#[test]
fn keepalive_post_pushes_expiry_out() {
    let server = Server::start();
    let sb = server.create(&json!({ "keepalive_seconds": 300 }));
    let id = sb["id"].as_str().unwrap();
    let before = sb["expires_at"].as_str().and_then(parse_utc).unwrap();
    // Let the clock move past a whole second so a pushed expiry is visible.
    std::thread::sleep(Duration::from_millis(1100));
    let r = server.request(Method::POST, &format!("/v1/sandboxes/{id}/keepalive"));
    r.expect(200);
    let v = r.json();
    assert_sandbox_shape(&v);
    let after = v["expires_at"].as_str().and_then(parse_utc).unwrap();
    assert!(
        after >= before + 1.0,
        "expires_at not pushed: {before} -> {after}"
    );
    let left = expires_in(&v);
    assert!((270.0..=330.0).contains(&left), "{v}");
}

#[test]
fn expired_sandbox_is_removed() {
    let server = Server::start();
    let sb = server.create(&json!({ "keepalive_seconds": 2 }));
    let id = sb["id"].as_str().unwrap().to_string();
    assert!(expires_in(&sb) <= 5.0, "{sb}");
    // Poll the list: it reports without counting as activity on the sandbox.
    let deadline = Instant::now() + Duration::from_secs(15);
    while server.list_ids().contains(&id) {
        assert!(
            Instant::now() < deadline,
            "sandbox with keepalive 2 s still listed after 15 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    server
        .request(Method::GET, &format!("/v1/sandboxes/{id}"))
        .expect_error(404, "not_found");
    server
        .exec_resp(&id, &json!({ "command": "true" }))
        .expect_error(404, "not_found");
}

/// Sends a POST whose JSON body is `size` bytes over a raw connection (the server may
/// answer and close before reading it all), with Content-Length or chunked.
/// Returns the status code and the answer's body.
fn post_huge(server: &Server, path: &str, size: usize, chunked: bool) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {size}")
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{framing}\r\nConnection: close\r\n\r\n"
    );
    let mut writer = stream.try_clone().unwrap();
    let send = std::thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(head.as_bytes())?;
        let open = b"{\"env\":{\"A\":\"";
        let close = b"\"}}";
        let mut body = Vec::with_capacity(size);
        body.extend_from_slice(open);
        body.resize(size - close.len(), b'a');
        body.extend_from_slice(close);
        for piece in body.chunks(256 * 1024) {
            if chunked {
                writer.write_all(format!("{:x}\r\n", piece.len()).as_bytes())?;
                writer.write_all(piece)?;
                writer.write_all(b"\r\n")?;
            } else {
                writer.write_all(piece)?;
            }
        }
        if chunked {
            writer.write_all(b"0\r\n\r\n")?;
        }
        Ok(())
    });
    // Read the answer while the body is still going out.
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|len| got.len() >= end + 4 + len) {
                break;
            }
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = send.join();
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer to a {size}-byte body: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn huge_json_body_is_413_and_server_survives() {
    let server = Server::start();
    for chunked in [false, true] {
        let (status, body) = post_huge(&server, "/v1/sandboxes", 50 << 20, chunked);
        assert_eq!(status, 413, "chunked={chunked}: {body}");
        assert!(body.contains("payload_too_large"), "{body}");
        server.request(Method::GET, "/health").expect(200);
    }
    assert!(server.list_ids().is_empty());
    let id = server.new_sandbox();
    assert_eq!(server.run_ok(&id, "echo fine"), "fine\n");
}
