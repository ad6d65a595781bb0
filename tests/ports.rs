//! The port proxy: HTTP and WebSocket to servers inside a sandbox, reached through
//! `/v1/sandboxes/{id}/ports/{port}/...` and through `{port}-{id}.{domain}` Host names,
//! with the API token or a port's public token. The servers are Python scripts
//! (tests/ports_apps) started as background processes in the sandbox.

mod common;

use common::ws::{next_text, ws_connect};
use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use tungstenite::Message;

const APP: &str = include_str!("ports_apps/app.py");
const WS: &str = include_str!("ports_apps/ws.py");
const TOKEN: &str = "ports-test-token";
/// Bound on any single wait for a WebSocket message.
const WAIT: Duration = Duration::from_secs(30);

fn token_server() -> Server {
    Server::start_with(ServerOpts {
        token: Some(TOKEN.into()),
        ..Default::default()
    })
}

/// Where the test app's files are, and its working directory.
const SITE: &str = "/workspace/site";

/// A sandbox with the test app on `port` serving /workspace/site.
#[track_caller]
fn sandbox_with_app(server: &Server, port: u16) -> String {
    let id = unique("ports");
    server.create(&json!({ "id": id }));
    server.put_file(&id, "/workspace/app.py", APP.as_bytes());
    server.put_file(
        &id,
        "/workspace/site/hello.txt",
        b"hello from the sandbox\n",
    );
    server.serve_in(
        &id,
        &format!("app{port}"),
        &format!("python3 /workspace/app.py {port}"),
        SITE,
        port,
    );
    id
}

fn port_path(id: &str, port: u16, rest: &str) -> String {
    format!("/v1/sandboxes/{id}/ports/{port}{rest}")
}

/// The test app's view of a request: its path and headers.
fn seen(resp: &Resp) -> (String, Vec<(String, String)>) {
    resp.expect(200);
    let v = resp.json();
    let headers = v["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap_or("").to_string(),
                h[1].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    (v["path"].as_str().unwrap_or("").to_string(), headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn http_reaches_a_server_inside_the_sandbox() {
    let server = token_server();
    let id = sandbox_with_app(&server, 8000);
    assert_contained(&server, &id);

    // A file, and the port's root (redirected to `/ports/8000/`, a directory listing).
    let r = server.request(Method::GET, &port_path(&id, 8000, "/hello.txt"));
    r.expect(200);
    assert_eq!(r.text(), "hello from the sandbox\n");
    let r = server.request(Method::GET, &port_path(&id, 8000, ""));
    r.expect(200);
    assert!(r.text().contains("hello.txt"), "{}", r.text());
    let r = server.request(Method::GET, &port_path(&id, 8000, "/missing"));
    assert_eq!(r.status, 404, "the sandbox's own 404 passes through");

    // Bodies both ways, every method, the query string as sent.
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let body = format!("a body for {method}").into_bytes();
        let (r, h) = server.send_with_headers(
            server
                .req(
                    method.clone(),
                    &port_path(&id, 8000, "/echo/x?a=1&b=%20c&d"),
                )
                .body(body.clone()),
        );
        r.expect(200);
        assert_eq!(r.body, body);
        assert_eq!(h["x-method"], method.as_str());
        assert_eq!(h["x-path"], "/echo/x?a=1&b=%20c&d");
        assert_eq!(
            h["set-cookie"], "app=1; Path=/",
            "the app's own cookies pass"
        );
    }
    let big: Vec<u8> = pseudo_random_bytes(3 * 1024 * 1024, 7);
    let r = server.send(
        server
            .req(Method::POST, &port_path(&id, 8000, "/echo"))
            .body(big.clone()),
    );
    r.expect(200);
    assert!(r.body == big, "a 3 MiB upload came back different");

    // Headers: the API token stays behind, hop-by-hop ones are dropped, the rest passes,
    // and the app learns where the request came from.
    let r = server.send(
        server
            .req(Method::GET, &port_path(&id, 8000, "/headers?q=1"))
            .header("X-Custom", "kept")
            .header("Connection", "x-hop")
            .header("X-Hop", "dropped")
            .header("Cookie", "mine=1"),
    );
    let (path, h) = seen(&r);
    assert_eq!(path, "/headers?q=1");
    assert_eq!(header(&h, "x-custom"), Some("kept"));
    assert_eq!(header(&h, "cookie"), Some("mine=1"));
    assert_eq!(header(&h, "authorization"), None, "{h:?}");
    assert_eq!(header(&h, "x-hop"), None, "{h:?}");
    assert_eq!(header(&h, "host"), Some("localhost:8000"));
    assert_eq!(
        header(&h, "x-forwarded-host"),
        Some(format!("127.0.0.1:{}", server.port).as_str())
    );
    assert_eq!(header(&h, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(header(&h, "x-forwarded-proto"), Some("http"));
    assert_eq!(
        header(&h, "x-forwarded-prefix"),
        Some(port_path(&id, 8000, "").as_str())
    );

    // A large download, streamed.
    server.run_ok(
        &id,
        "head -c 20971520 /dev/urandom > /workspace/site/big.bin",
    );
    let want = server.run_ok(&id, "sha256sum /workspace/site/big.bin");
    let r = server.request(Method::GET, &port_path(&id, 8000, "/big.bin"));
    r.expect(200);
    assert_eq!(r.body.len(), 20971520);
    let got = hex::encode(Sha256::digest(&r.body));
    assert!(want.starts_with(&got), "sha256 {got} vs {want}");
}

#[test]
fn bad_ports_unknown_sandboxes_and_closed_ports_are_clear_errors() {
    let server = token_server();
    let id = unique("ports");
    server.create(&json!({ "id": id }));
    server
        .request(Method::GET, &port_path(&id, 8009, "/"))
        .expect_error(502, "bad_gateway");
    server
        .request(Method::POST, &port_path(&id, 8009, "/x"))
        .expect_error(502, "bad_gateway");
    for bad in ["0", "65536", "70000", "http"] {
        server
            .request(Method::GET, &format!("/v1/sandboxes/{id}/ports/{bad}/x"))
            .expect_error(400, "bad_request");
        server
            .request(
                Method::POST,
                &format!("/v1/sandboxes/{id}/port-tokens/{bad}"),
            )
            .expect_error(400, "bad_request");
    }
    server
        .request(Method::GET, &port_path("no-such-sandbox", 8000, "/"))
        .expect_error(404, "not_found");
    server
        .request(
            Method::POST,
            "/v1/sandboxes/no-such-sandbox/port-tokens/8000",
        )
        .expect_error(404, "not_found");
    // Without the token: 401, before anything reaches the sandbox.
    server
        .send(server.req_anon(Method::GET, &port_path(&id, 8009, "/")))
        .expect_error(401, "unauthorized");
    server
        .send(server.req_anon(Method::GET, &port_path("no-such-sandbox", 8000, "/")))
        .expect_error(401, "unauthorized");
    // The sandbox and the server are unharmed.
    assert_eq!(server.run_ok(&id, "echo ok"), "ok\n");
}

#[test]
fn websockets_pass_through_unchanged() {
    let server = token_server();
    let id = unique("ports");
    server.create(&json!({ "id": id }));
    server.put_file(&id, "/workspace/ws.py", WS.as_bytes());
    server.run_ok(&id, "mkdir -p /workspace/site");
    server.serve_in(&id, "ws", "python3 /workspace/ws.py 8765", SITE, 8765);
    let bearer = format!("Bearer {TOKEN}");
    let mut ws = ws_connect(
        &server,
        &port_path(&id, 8765, "/chat/room?user=a%20b"),
        &[("Authorization", &bearer)],
        WAIT,
    )
    .expect("upgrade");
    assert_eq!(next_text(&mut ws, WAIT), "path:/chat/room?user=a%20b");
    let long = "x".repeat(70_000);
    for msg in ["one", "two", "three", long.as_str(), "after a long one"] {
        ws.send(Message::Text(msg.into())).expect("send");
        let got = next_text(&mut ws, WAIT);
        assert!(
            got == format!("echo:{msg}"),
            "echo of {} bytes differs",
            msg.len()
        );
    }
    let _ = ws.close(None);

    // Two at once, independent of each other.
    let mut a = ws_connect(
        &server,
        &port_path(&id, 8765, "/a"),
        &[("Authorization", &bearer)],
        WAIT,
    )
    .expect("upgrade a");
    let mut b = ws_connect(
        &server,
        &port_path(&id, 8765, "/b"),
        &[("Authorization", &bearer)],
        WAIT,
    )
    .expect("upgrade b");
    assert_eq!(next_text(&mut a, WAIT), "path:/a");
    assert_eq!(next_text(&mut b, WAIT), "path:/b");
    b.send(Message::Text("to b".into())).expect("send b");
    a.send(Message::Text("to a".into())).expect("send a");
    assert_eq!(next_text(&mut b, WAIT), "echo:to b");
    assert_eq!(next_text(&mut a, WAIT), "echo:to a");

    // No token: refused before the upgrade; nothing listening: 502.
    assert_eq!(
        ws_connect(&server, &port_path(&id, 8765, "/"), &[], WAIT).err(),
        Some(401)
    );
    // A browser's WebSocket carries no Authorization: the port's public token opens it.
    let r = server.request(
        Method::POST,
        &format!("/v1/sandboxes/{id}/port-tokens/8765"),
    );
    r.expect(201);
    let token = r.json()["token"].as_str().expect("token").to_string();
    let mut ws = ws_connect(
        &server,
        &port_path(&id, 8765, &format!("/live?sandpit_token={token}")),
        &[],
        WAIT,
    )
    .expect("upgrade with the port token");
    assert_eq!(next_text(&mut ws, WAIT), "path:/live");
    ws.send(Message::Text("public".into())).expect("send");
    assert_eq!(next_text(&mut ws, WAIT), "echo:public");
    let cookie = format!("sandpit_port_token={token}");
    let mut ws = ws_connect(
        &server,
        &port_path(&id, 8765, "/c"),
        &[("Cookie", &cookie)],
        WAIT,
    )
    .expect("upgrade with the port-token cookie");
    assert_eq!(next_text(&mut ws, WAIT), "path:/c");
    assert_eq!(
        ws_connect(
            &server,
            &port_path(&id, 8766, "/"),
            &[("Authorization", &bearer)],
            WAIT
        )
        .err(),
        Some(502)
    );
}

fn anon_get(server: &Server, path: &str) -> Resp {
    server.send(server.req_anon(Method::GET, path))
}

#[test]
fn a_public_token_opens_its_port_and_nothing_else() {
    let mut server = token_server();
    let a = sandbox_with_app(&server, 8000);
    server.serve_in(&a, "other", "python3 /workspace/app.py 8001", SITE, 8001);
    let b = sandbox_with_app(&server, 8000);

    let r = server.request(Method::POST, &format!("/v1/sandboxes/{a}/port-tokens/8000"));
    r.expect(201);
    let made = r.json();
    let token = made["token"].as_str().expect("token").to_string();
    assert!(token.len() >= 40, "{made}");
    assert_eq!(made["port"], 8000);
    let url = made["url"].as_str().expect("url");
    assert!(
        url.ends_with(&format!(
            "/v1/sandboxes/{a}/ports/8000/?sandpit_token={token}"
        )),
        "{url}"
    );

    // Without any token: 401.
    anon_get(&server, &port_path(&a, 8000, "/hello.txt")).expect_error(401, "unauthorized");
    anon_get(&server, &port_path(&a, 8000, "")).expect_error(401, "unauthorized");
    // The shared link itself: `/ports/8000/?sandpit_token=`, and without the slash.
    let r = anon_get(&server, &url[url.find("/v1/").expect("path")..]);
    r.expect(200);
    assert!(r.text().contains("hello.txt"), "{}", r.text());
    let r = anon_get(
        &server,
        &port_path(&a, 8000, &format!("?sandpit_token={token}")),
    );
    r.expect(200);
    assert!(r.text().contains("hello.txt"), "{}", r.text());

    // The token in the query: in, not forwarded, and a cookie for the port's path is set.
    let (r, h) = server.send_with_headers(server.req_anon(
        Method::GET,
        &port_path(&a, 8000, &format!("/headers?x=1&sandpit_token={token}")),
    ));
    let (path, seen_headers) = seen(&r);
    assert_eq!(path, "/headers?x=1", "the token is not forwarded");
    let cookie = h["set-cookie"].to_str().expect("cookie");
    assert!(
        cookie.starts_with(&format!("sandpit_port_token={token};"))
            && cookie.contains(&format!("Path=/v1/sandboxes/{a}/ports/8000/"))
            && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    assert_eq!(header(&seen_headers, "cookie"), None);

    // The header, and the cookie (as a browser sends it back): in, and not forwarded.
    let r = server.send(
        server
            .req_anon(Method::GET, &port_path(&a, 8000, "/headers"))
            .header("X-Sandpit-Port-Token", &token),
    );
    let (_, seen_headers) = seen(&r);
    assert_eq!(header(&seen_headers, "x-sandpit-port-token"), None);
    let r = server.send(
        server
            .req_anon(Method::GET, &port_path(&a, 8000, "/headers"))
            .header("Cookie", format!("theirs=1; sandpit_port_token={token}")),
    );
    let (_, seen_headers) = seen(&r);
    assert_eq!(header(&seen_headers, "cookie"), Some("theirs=1"));
    let r = server.send(
        server
            .req_anon(Method::POST, &port_path(&a, 8000, "/echo"))
            .header("X-Sandpit-Port-Token", &token)
            .body("posted"),
    );
    r.expect(200);
    assert_eq!(r.text(), "posted");

    // Not another port, not another sandbox, not the rest of the API.
    let q = format!("?sandpit_token={token}");
    for path in [
        port_path(&a, 8001, &format!("/hello.txt{q}")),
        port_path(&b, 8000, &format!("/hello.txt{q}")),
        format!("/v1/sandboxes/{a}{q}"),
        format!("/v1/sandboxes{q}"),
        format!("/v1/sandboxes/{a}/files?path=/workspace/app.py&sandpit_token={token}"),
        format!("/v1/sandboxes/{a}/port-tokens{q}"),
        format!("/metrics{q}"),
    ] {
        anon_get(&server, &path).expect_error(401, "unauthorized");
        server
            .send(
                server
                    .req_anon(Method::GET, &path)
                    .header("X-Sandpit-Port-Token", &token)
                    .header("Cookie", format!("sandpit_port_token={token}")),
            )
            .expect_error(401, "unauthorized");
    }
    server
        .send(
            server
                .req_anon(Method::POST, &format!("/v1/sandboxes/{a}/exec"))
                .header("X-Sandpit-Port-Token", &token)
                .json(&json!({"command": "id"})),
        )
        .expect_error(401, "unauthorized");
    anon_get(
        &server,
        &port_path(&a, 8000, "/hello.txt?sandpit_token=wrong"),
    )
    .expect_error(401, "unauthorized");

    // Listed (without the token); it survives a server restart.
    let r = server.request(Method::GET, &format!("/v1/sandboxes/{a}/port-tokens"));
    r.expect(200);
    let list: Value = r.json();
    assert_eq!(list["ports"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list["ports"][0]["port"], 8000);
    assert!(!list.to_string().contains(&token));
    server.restart();
    let r = anon_get(&server, &port_path(&a, 8000, &format!("/hello.txt{q}")));
    r.expect(200);
    assert_eq!(r.text(), "hello from the sandbox\n");

    // A new token replaces the old one; a revoked one opens nothing.
    let r = server.request(Method::POST, &format!("/v1/sandboxes/{a}/port-tokens/8000"));
    r.expect(201);
    let second = r.json()["token"].as_str().expect("token").to_string();
    assert_ne!(second, token);
    anon_get(&server, &port_path(&a, 8000, &format!("/hello.txt{q}")))
        .expect_error(401, "unauthorized");
    let q2 = format!("?sandpit_token={second}");
    anon_get(&server, &port_path(&a, 8000, &format!("/hello.txt{q2}"))).expect(200);
    server
        .request(
            Method::DELETE,
            &format!("/v1/sandboxes/{a}/port-tokens/8000"),
        )
        .expect(204);
    anon_get(&server, &port_path(&a, 8000, &format!("/hello.txt{q2}")))
        .expect_error(401, "unauthorized");
    server
        .request(
            Method::DELETE,
            &format!("/v1/sandboxes/{a}/port-tokens/8000"),
        )
        .expect_error(404, "not_found");

    // Tokens go with their sandbox: one made again under the same id starts with none.
    let r = server.request(Method::POST, &format!("/v1/sandboxes/{b}/port-tokens/8000"));
    r.expect(201);
    let tb = r.json()["token"].as_str().expect("token").to_string();
    server.delete_sandbox(&b);
    server.create(&json!({ "id": b }));
    let r = server.request(Method::GET, &format!("/v1/sandboxes/{b}/port-tokens"));
    r.expect(200);
    assert_eq!(r.json()["ports"], json!([]));
    anon_get(
        &server,
        &port_path(&b, 8000, &format!("/?sandpit_token={tb}")),
    )
    .expect_error(401, "unauthorized");
}

#[test]
fn host_names_under_the_ports_domain_reach_ports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sandpit.toml");
    std::fs::write(&config, "ports_domain = \"preview.test\"\n").expect("config");
    let server = Server::start_with(ServerOpts {
        token: Some(TOKEN.into()),
        args: vec!["--config".into(), config.display().to_string()],
        ..Default::default()
    });
    let id = sandbox_with_app(&server, 8000);
    let host = format!("8000-{id}.preview.test:{}", server.port);

    // Any path, even one the API itself serves, goes to the sandbox's port.
    let r = server.send(
        server
            .req(Method::GET, "/v1/sandboxes?x=1")
            .header("Host", &host),
    );
    r.expect(404);
    let r = server.send(
        server
            .req(Method::GET, "/headers?x=1")
            .header("Host", &host),
    );
    let (path, h) = seen(&r);
    assert_eq!(path, "/headers?x=1");
    assert_eq!(header(&h, "x-forwarded-host"), Some(host.as_str()));
    assert_eq!(header(&h, "x-forwarded-prefix"), None);
    let r = server.send(server.req(Method::GET, "/hello.txt").header("Host", &host));
    r.expect(200);
    assert_eq!(r.text(), "hello from the sandbox\n");

    // Without a token, 401; a public token opens it and its cookie covers the whole host.
    server
        .send(
            server
                .req_anon(Method::GET, "/hello.txt")
                .header("Host", &host),
        )
        .expect_error(401, "unauthorized");
    let r = server.request(
        Method::POST,
        &format!("/v1/sandboxes/{id}/port-tokens/8000"),
    );
    r.expect(201);
    let made = r.json();
    let token = made["token"].as_str().expect("token");
    assert_eq!(
        made["url"],
        format!("http://8000-{id}.preview.test/?sandpit_token={token}")
    );
    let (r, h) = server.send_with_headers(
        server
            .req_anon(Method::GET, &format!("/hello.txt?sandpit_token={token}"))
            .header("Host", &host),
    );
    r.expect(200);
    assert!(
        h["set-cookie"]
            .to_str()
            .expect("cookie")
            .contains("Path=/;"),
        "{h:?}"
    );
    // The token does not open another port of the sandbox by its host name.
    server
        .send(
            server
                .req_anon(Method::GET, &format!("/hello.txt?sandpit_token={token}"))
                .header("Host", format!("8001-{id}.preview.test")),
        )
        .expect_error(401, "unauthorized");

    // Other hosts reach the API as always; names under the domain that are not
    // `{port}-{id}` too.
    let r = server.send(server.req(Method::GET, "/v1/sandboxes"));
    r.expect(200);
    let r = server.send(
        server
            .req(Method::GET, "/v1/sandboxes")
            .header("Host", "preview.test"),
    );
    r.expect(200);
    let r = server.send(
        server
            .req(Method::GET, &format!("/v1/sandboxes/{id}"))
            .header("Host", format!("www.preview.test:{}", server.port)),
    );
    r.expect(200);
    // A sandbox that does not exist under the domain: the proxy's 404.
    server
        .send(
            server
                .req(Method::GET, "/")
                .header("Host", "8000-nope.preview.test"),
        )
        .expect_error(404, "not_found");
}

/// Open file descriptors of the sandbox's agent (PID 1 inside).
fn agent_fds(server: &Server, id: &str) -> usize {
    let out = server.run_ok(id, "ls /proc/1/fd | wc -l");
    out.trim().parse().expect("a count")
}

#[test]
fn bodies_stream_and_abandoned_exchanges_leave_nothing_behind() {
    let server = token_server();
    let id = sandbox_with_app(&server, 8000);

    // The second line is written only after the first one has arrived: no buffering.
    let resp = server
        .req(Method::GET, &port_path(&id, 8000, "/stream"))
        .send()
        .expect("stream");
    assert_eq!(resp.status().as_u16(), 200);
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(resp));
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("first"));
    server.put_file(&id, "/workspace/site/go", b"");
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("second"));
    assert!(lines.next().is_none());

    // Downloads dropped half-way, and requests finished, close their tunnels.
    server.run_ok(&id, "head -c 20971520 /dev/zero > /workspace/site/big.bin");
    let before = agent_fds(&server, &id);
    for _ in 0..8 {
        let mut resp = server
            .req(Method::GET, &port_path(&id, 8000, "/big.bin"))
            .send()
            .expect("download");
        let mut some = vec![0u8; 64 * 1024];
        std::io::Read::read_exact(&mut resp, &mut some).expect("the first bytes");
        drop(resp);
        server
            .request(Method::GET, &port_path(&id, 8000, "/hello.txt"))
            .expect(200);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut now = agent_fds(&server, &id);
    while now > before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        now = agent_fds(&server, &id);
    }
    assert!(
        now <= before,
        "the agent holds {now} descriptors, {before} before"
    );
    // The app still answers.
    let r = server.request(Method::GET, &port_path(&id, 8000, "/hello.txt"));
    r.expect(200);
}
