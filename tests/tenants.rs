//! Tenants through a real config file: each tenant sees and touches only its own sandboxes
//! (another tenant's answers 404, never 403), on the native API and in the dialects; the
//! admin sees all; quotas answer 429 with `Retry-After` and recover; ownership survives a
//! restart; a wrong key is 401.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::path::PathBuf;

const ADMIN: &str = "admin-token-for-tests";
const ACME: &str = "acme-key-1";
const ACME2: &str = "acme-key-2";
const GLOBEX: &str = "globex-key";
const OPS: &str = "ops-key";

/// A server whose config has the tenants of `extra` plus acme (two keys), globex and the
/// admin tenant ops; `SANDPIT_AUTH_TOKEN` is [`ADMIN`] (the harness's own key).
fn server_with(extra: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("config dir");
    let path: PathBuf = dir.path().join("sandpit.toml");
    let config = format!(
        "[[tenants]]\nname = \"acme\"\nkeys_sha256 = [\"{}\", \"{}\"]\n\n\
         [[tenants]]\nname = \"globex\"\nkey_sha256 = \"{}\"\n\n\
         [[tenants]]\nname = \"ops\"\nkey_sha256 = \"{}\"\nadmin = true\n\n{extra}",
        hash_key(ACME),
        hash_key(ACME2),
        hash_key(GLOBEX),
        hash_key(OPS)
    );
    std::fs::write(&path, config).expect("write config");
    let server = Server::start_with(ServerOpts {
        token: Some(ADMIN.into()),
        args: vec!["--config".into(), path.display().to_string()],
        ..Default::default()
    });
    (server, dir)
}

/// A request as the holder of `key`.
fn call(s: &Server, key: &str, method: Method, path: &str, body: Option<&Value>) -> Resp {
    let rb = s.req_anon(method, path).bearer_auth(key);
    s.send(match body {
        Some(b) => rb.json(b),
        None => rb,
    })
}

fn create_as(s: &Server, key: &str, body: &Value) -> Value {
    let r = call(s, key, Method::POST, "/v1/sandboxes", Some(body));
    r.expect(201);
    r.json()
}

fn ids_as(s: &Server, key: &str) -> Vec<String> {
    let r = call(s, key, Method::GET, "/v1/sandboxes", None);
    r.expect(200);
    let mut ids: Vec<String> = r.json()["sandboxes"]
        .as_array()
        .expect("sandboxes")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect();
    ids.sort();
    ids
}

fn exec_as(s: &Server, key: &str, id: &str, command: &str) -> Resp {
    call(
        s,
        key,
        Method::POST,
        &format!("/v1/sandboxes/{id}/exec"),
        Some(&json!({ "command": command })),
    )
}

#[test]
fn tenants_see_and_touch_only_their_own_sandboxes() {
    let (server, _cfg) = server_with("");
    let a = unique("boxa");
    let created = create_as(&server, ACME, &json!({ "id": a }));
    assert_eq!(created["tenant"], "acme", "{created}");
    // A second key of the same tenant is the same tenant.
    let a2 = create_as(&server, ACME2, &json!({}))["id"]
        .as_str()
        .expect("id")
        .to_string();
    let g = create_as(&server, GLOBEX, &json!({}))["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_contained(&server, &a);
    let r = exec_as(
        &server,
        ACME,
        &a,
        "echo secret > /workspace/s.txt && echo ok",
    );
    r.expect(200);
    assert_eq!(r.json()["stdout"], "ok\n");
    call(
        &server,
        ACME,
        Method::POST,
        &format!("/v1/sandboxes/{a}/port-tokens/8080"),
        None,
    )
    .expect(201);

    // Lists.
    let mut mine = vec![a.clone(), a2.clone()];
    mine.sort();
    assert_eq!(ids_as(&server, ACME), mine);
    assert_eq!(ids_as(&server, ACME2), mine);
    assert_eq!(ids_as(&server, GLOBEX), vec![g.clone()]);
    for admin in [ADMIN, OPS] {
        let all = ids_as(&server, admin);
        for id in [&a, &a2, &g] {
            assert!(all.contains(id), "admin list {all:?} lacks {id}");
        }
    }

    // Every route on acme's sandbox, as globex: 404 not_found, never 403.
    let f = |route: &str, path: &str| Server::files_path(&a, route, path);
    let attempts: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/v1/sandboxes/{a}"), None),
        (
            Method::PATCH,
            format!("/v1/sandboxes/{a}"),
            Some(json!({"keepalive_seconds": 5})),
        ),
        (
            Method::PATCH,
            format!("/v1/sandboxes/{a}"),
            Some(json!({"limits": {"memory_mb": 16}})),
        ),
        (Method::POST, format!("/v1/sandboxes/{a}/keepalive"), None),
        (
            Method::POST,
            format!("/v1/sandboxes/{a}/exec"),
            Some(json!({"command": "id"})),
        ),
        (Method::GET, f("", "/workspace/s.txt"), None),
        (Method::GET, f("/list", "/workspace"), None),
        (Method::GET, f("/stat", "/workspace/s.txt"), None),
        (Method::DELETE, f("", "/workspace/s.txt"), None),
        (
            Method::POST,
            format!("/v1/sandboxes/{a}/files/mkdir"),
            Some(json!({"path": "/workspace/x"})),
        ),
        (Method::GET, format!("/v1/sandboxes/{a}/sessions"), None),
        (
            Method::POST,
            format!("/v1/sandboxes/{a}/sessions"),
            Some(json!({})),
        ),
        (
            Method::GET,
            format!("/v1/sandboxes/{a}/sessions/default"),
            None,
        ),
        (Method::GET, format!("/v1/sandboxes/{a}/processes"), None),
        (
            Method::POST,
            format!("/v1/sandboxes/{a}/processes"),
            Some(json!({"command": "sleep 100"})),
        ),
        (
            Method::GET,
            format!("/v1/sandboxes/{a}/processes/p1/logs"),
            None,
        ),
        (Method::GET, format!("/v1/sandboxes/{a}/contexts"), None),
        (
            Method::POST,
            format!("/v1/sandboxes/{a}/code"),
            Some(json!({"code": "1"})),
        ),
        (Method::GET, format!("/v1/sandboxes/{a}/port-tokens"), None),
        (
            Method::POST,
            format!("/v1/sandboxes/{a}/port-tokens/8080"),
            None,
        ),
        (
            Method::DELETE,
            format!("/v1/sandboxes/{a}/port-tokens/8080"),
            None,
        ),
        (Method::GET, format!("/v1/sandboxes/{a}/ports/8080/"), None),
        (
            Method::POST,
            format!("/v1/sandboxes/{a}/git/clone"),
            Some(json!({"url": "https://git.invalid/x.git"})),
        ),
        (Method::DELETE, format!("/v1/sandboxes/{a}"), None),
    ];
    for (method, path, body) in &attempts {
        let r = call(&server, GLOBEX, method.clone(), path, body.as_ref());
        assert_eq!(r.status, 404, "{method} {path} as globex: {}", r.text());
        r.expect_error(404, "not_found");
        assert!(
            !r.text().contains("acme"),
            "{method} {path} names the owner: {}",
            r.text()
        );
    }
    // The admin (token or admin tenant) touches it; the owner's data is intact.
    for admin in [ADMIN, OPS] {
        call(
            &server,
            admin,
            Method::GET,
            &format!("/v1/sandboxes/{a}"),
            None,
        )
        .expect(200);
    }
    let r = exec_as(&server, OPS, &a, "cat /workspace/s.txt");
    r.expect(200);
    assert_eq!(r.json()["stdout"], "secret\n");
    let r = exec_as(&server, ACME, &a, "ls /workspace");
    r.expect(200);
    assert_eq!(r.json()["stdout"], "s.txt\n", "globex changed acme's files");
    let r = call(
        &server,
        ACME,
        Method::GET,
        &format!("/v1/sandboxes/{a}/processes"),
        None,
    );
    r.expect(200);
    assert_eq!(
        r.json()["processes"],
        json!([]),
        "globex started a process in acme's"
    );
    let r = call(
        &server,
        ACME,
        Method::GET,
        &format!("/v1/sandboxes/{a}/sessions"),
        None,
    );
    r.expect(200);
    assert!(
        !r.text().contains("\"id\":\"s-"),
        "globex made a session in acme's: {}",
        r.text()
    );
    let r = call(
        &server,
        ACME,
        Method::GET,
        &format!("/v1/sandboxes/{a}/port-tokens"),
        None,
    );
    r.expect(200);
    assert_eq!(r.json()["ports"][0]["port"], 8080, "{}", r.text());

    // An id another tenant holds answers exactly like one's own taken id.
    let foreign = call(
        &server,
        GLOBEX,
        Method::POST,
        "/v1/sandboxes",
        Some(&json!({"id": a})),
    );
    let own = call(
        &server,
        ACME,
        Method::POST,
        "/v1/sandboxes",
        Some(&json!({"id": a})),
    );
    foreign.expect_error(409, "already_exists");
    own.expect_error(409, "already_exists");
    assert_eq!(foreign.json(), own.json());

    // Dialects: rlm (creates on first use) and acontext.
    let rlm = call(
        &server,
        GLOBEX,
        Method::POST,
        "/compat/rlm/sandbox/exec",
        Some(&json!({"sandbox_id": a, "command": "cat /workspace/s.txt"})),
    );
    assert_eq!(
        rlm.status,
        404,
        "rlm exec in acme's sandbox as globex: {}",
        rlm.text()
    );
    assert!(!rlm.text().contains("secret"), "{}", rlm.text());
    let rlm = call(
        &server,
        GLOBEX,
        Method::GET,
        &format!("/compat/rlm/sandbox/read?sandbox_id={a}&path=/workspace/s.txt"),
        None,
    );
    assert_eq!(rlm.status, 404, "{}", rlm.text());
    let rlm = call(
        &server,
        ACME,
        Method::POST,
        "/compat/rlm/sandbox/exec",
        Some(&json!({"sandbox_id": a, "command": "cat /workspace/s.txt"})),
    );
    rlm.expect(200);
    assert_eq!(rlm.json()["stdout"], "secret\n");
    let ac = call(
        &server,
        GLOBEX,
        Method::GET,
        &format!("/compat/acontext/sandbox/{a}"),
        None,
    );
    assert_eq!(ac.status, 404, "acontext info as globex: {}", ac.text());
    let ac = call(
        &server,
        GLOBEX,
        Method::POST,
        &format!("/compat/acontext/sandbox/{a}/exec"),
        Some(&json!({"command": "id"})),
    );
    assert_eq!(ac.status, 404, "acontext exec as globex: {}", ac.text());
    // acontext's kill of a missing sandbox is a success: it must not kill acme's.
    let _ = call(
        &server,
        GLOBEX,
        Method::POST,
        &format!("/compat/acontext/sandbox/{a}/kill"),
        None,
    );
    call(
        &server,
        ACME,
        Method::GET,
        &format!("/compat/acontext/sandbox/{a}"),
        None,
    )
    .expect(200);
    assert!(ids_as(&server, ACME).contains(&a));

    // kapin: get-or-create and exec are 404; its cleanup of a "missing" sandbox kills nothing.
    let keeper = call(
        &server,
        ACME,
        Method::POST,
        &format!("/v1/sandboxes/{a}/processes"),
        Some(&json!({"id": "keeper", "command": "sleep 300"})),
    );
    assert_eq!(keeper.status / 100, 2, "{}", keeper.text());
    let k = call(
        &server,
        GLOBEX,
        Method::POST,
        &format!("/compat/kapin/sandboxes/{a}"),
        None,
    );
    assert_eq!(k.status, 404, "kapin get-or-create as globex: {}", k.text());
    let k = call(
        &server,
        GLOBEX,
        Method::POST,
        &format!("/compat/kapin/sandboxes/{a}/exec"),
        Some(&json!({"command": "cat /workspace/s.txt"})),
    );
    assert_eq!(k.status, 404, "kapin exec as globex: {}", k.text());
    assert!(!k.text().contains("secret"), "{}", k.text());
    let _ = call(
        &server,
        GLOBEX,
        Method::DELETE,
        &format!("/compat/kapin/sandboxes/{a}"),
        None,
    );
    let p = call(
        &server,
        ACME,
        Method::GET,
        &format!("/v1/sandboxes/{a}/processes/keeper"),
        None,
    );
    p.expect(200);
    assert_eq!(p.json()["status"], "running", "{}", p.text());

    // Who am I.
    let me = call(&server, ACME2, Method::GET, "/v1/tenant", None);
    me.expect(200);
    let me = me.json();
    assert_eq!(me["tenant"], "acme", "{me}");
    assert_eq!(me["admin"], false, "{me}");
    assert_eq!(me["usage"]["sandboxes"], 2, "{me}");
    let ops = call(&server, OPS, Method::GET, "/v1/tenant", None).json();
    assert_eq!(ops["admin"], true, "{ops}");

    // Metrics count every tenant's sandboxes: admin keys only.
    let m = call(&server, ACME, Method::GET, "/metrics", None);
    m.expect_error(403, "permission_denied");
    for admin in [ADMIN, OPS] {
        let m = call(&server, admin, Method::GET, "/metrics", None);
        m.expect(200);
        assert!(m.text().contains("sandpit_sandboxes"), "{}", m.text());
    }

    // Owners delete their own.
    call(
        &server,
        GLOBEX,
        Method::DELETE,
        &format!("/v1/sandboxes/{g}"),
        None,
    )
    .expect(204);
    call(
        &server,
        ACME,
        Method::DELETE,
        &format!("/v1/sandboxes/{a2}"),
        None,
    )
    .expect(204);
    assert_eq!(ids_as(&server, ACME), vec![a.clone()]);
}

#[test]
fn wrong_or_missing_keys_are_401_in_each_shape() {
    let (server, _cfg) = server_with("");
    let r = call(&server, "not-a-key", Method::GET, "/v1/sandboxes", None);
    r.expect_error(401, "unauthorized");
    server
        .send(server.req_anon(Method::GET, "/v1/sandboxes"))
        .expect_error(401, "unauthorized");
    // A key's hash is not a key.
    let r = call(&server, &hash_key(ACME), Method::GET, "/v1/tenant", None);
    r.expect_error(401, "unauthorized");
    let r = call(
        &server,
        "not-a-key",
        Method::POST,
        "/compat/rlm/sandbox/exec",
        Some(&json!({"sandbox_id": "x", "command": "id"})),
    );
    r.expect_dialect_error(401, "Invalid token");
    let r = server.send(server.req_anon(Method::POST, "/compat/rlm/sandbox/exec"));
    r.expect_dialect_error(401, "Authorization header required");
    let r = call(
        &server,
        "nope",
        Method::GET,
        "/compat/acontext/sandbox/x",
        None,
    );
    r.expect_dialect_error(401, "Unauthorized");
    // Health stays public.
    server
        .send(server.req_anon(Method::GET, "/health"))
        .expect(200);
    assert!(ids_as(&server, ADMIN).is_empty());
}

/// The `Retry-After` seconds of a 429 `quota_exceeded` answer.
#[track_caller]
fn refused(server: &Server, key: &str, method: Method, path: &str, body: &Value) -> u64 {
    let (r, headers) =
        server.send_with_headers(server.req_anon(method, path).bearer_auth(key).json(body));
    assert_eq!(r.status, 429, "{path}: {}", r.text());
    let retry = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("429 without a numeric Retry-After: {headers:?}"));
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    retry
}

#[test]
fn quotas_answer_429_with_retry_after_and_recover() {
    let hq = hash_key("quota-key");
    let hr = hash_key("rate-key");
    let extra = format!(
        "[[tenants]]\nname = \"small\"\nkey_sha256 = \"{hq}\"\n\
         [tenants.quotas]\nmax_sandboxes = 2\nmax_memory_mb = 300\n\n\
         [[tenants]]\nname = \"rated\"\nkey_sha256 = \"{hr}\"\n\
         [tenants.quotas]\ncreations_per_minute = 2\n"
    );
    let (server, _cfg) = server_with(&extra);
    let q = "quota-key";

    // Memory: 128 + 256 > 300.
    let first = create_as(&server, q, &json!({"limits": {"memory_mb": 128}}));
    let first = first["id"].as_str().expect("id").to_string();
    let body = json!({"limits": {"memory_mb": 256}});
    refused(&server, q, Method::POST, "/v1/sandboxes", &body);
    let r = call(&server, q, Method::POST, "/v1/sandboxes", Some(&body));
    r.expect_error(429, "quota_exceeded");
    let msg = r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains("max_memory_mb") && msg.contains("128/300"),
        "{msg}"
    );
    // Growing a sandbox past the quota is refused the same way.
    let grow = json!({"limits": {"memory_mb": 400}});
    refused(
        &server,
        q,
        Method::PATCH,
        &format!("/v1/sandboxes/{first}"),
        &grow,
    );

    // Count: two at once.
    let second = create_as(&server, q, &json!({"limits": {"memory_mb": 64}}));
    let second = second["id"].as_str().expect("id").to_string();
    let r = call(
        &server,
        q,
        Method::POST,
        "/v1/sandboxes",
        Some(&json!({"limits": {"memory_mb": 16}})),
    );
    r.expect_error(429, "quota_exceeded");
    assert!(
        r.text().contains("max_sandboxes") && r.text().contains("2/2"),
        "{}",
        r.text()
    );
    refused(
        &server,
        q,
        Method::POST,
        "/v1/sandboxes",
        &json!({"limits": {"memory_mb": 16}}),
    );
    // A dialect that creates on first use meets the same quota, with Retry-After.
    refused(
        &server,
        q,
        Method::POST,
        "/compat/rlm/sandbox/exec",
        &json!({"sandbox_id": unique("rlm-q"), "command": "id"}),
    );
    let me = call(&server, q, Method::GET, "/v1/tenant", None).json();
    assert_eq!(me["quotas"]["max_sandboxes"], 2, "{me}");
    assert_eq!(me["usage"]["sandboxes"], 2, "{me}");
    assert_eq!(me["usage"]["memory_mb"], 192, "{me}");
    // The admin has no quota.
    create_as(&server, ADMIN, &json!({}));
    // Recovers: a deleted sandbox frees its share.
    call(
        &server,
        q,
        Method::DELETE,
        &format!("/v1/sandboxes/{second}"),
        None,
    )
    .expect(204);
    create_as(&server, q, &json!({"limits": {"memory_mb": 64}}));

    // Rate: two per minute, the third waits for the window.
    let r = "rate-key";
    for _ in 0..2 {
        let id = create_as(&server, r, &json!({}))["id"]
            .as_str()
            .expect("id")
            .to_string();
        call(
            &server,
            r,
            Method::DELETE,
            &format!("/v1/sandboxes/{id}"),
            None,
        )
        .expect(204);
    }
    let retry = refused(&server, r, Method::POST, "/v1/sandboxes", &json!({}));
    let resp = call(&server, r, Method::POST, "/v1/sandboxes", Some(&json!({})));
    resp.expect_error(429, "quota_exceeded");
    assert!(
        resp.text().contains("creations_per_minute"),
        "{}",
        resp.text()
    );
    // After Retry-After (plus a little), creation works again; never more than a minute.
    std::thread::sleep(std::time::Duration::from_secs(retry + 1));
    let mut ok = false;
    for _ in 0..5 {
        let resp = call(&server, r, Method::POST, "/v1/sandboxes", Some(&json!({})));
        if resp.status == 201 {
            ok = true;
            break;
        }
        resp.expect_error(429, "quota_exceeded");
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    assert!(ok, "creation never allowed again after Retry-After");
}

#[test]
fn ownership_survives_a_restart() {
    let (mut server, _cfg) = server_with("");
    let a = create_as(&server, ACME, &json!({}))["id"]
        .as_str()
        .expect("id")
        .to_string();
    let g = create_as(&server, GLOBEX, &json!({}))["id"]
        .as_str()
        .expect("id")
        .to_string();
    exec_as(&server, ACME, &a, "echo mine > /workspace/m").expect(200);
    server.restart();
    assert_eq!(ids_as(&server, ACME), vec![a.clone()]);
    assert_eq!(ids_as(&server, GLOBEX), vec![g.clone()]);
    call(
        &server,
        GLOBEX,
        Method::GET,
        &format!("/v1/sandboxes/{a}"),
        None,
    )
    .expect_error(404, "not_found");
    exec_as(&server, GLOBEX, &a, "id").expect_error(404, "not_found");
    let got = call(
        &server,
        ACME,
        Method::GET,
        &format!("/v1/sandboxes/{a}"),
        None,
    );
    got.expect(200);
    assert_eq!(got.json()["tenant"], "acme");
    let r = exec_as(&server, ACME, &a, "cat /workspace/m");
    r.expect(200);
    assert_eq!(r.json()["stdout"], "mine\n");
}

#[test]
fn without_tenants_everything_belongs_to_the_default_tenant() {
    let server = Server::start();
    let sb = server.create(&json!({}));
    assert_eq!(sb["tenant"], "default", "{sb}");
    let me = server.request(Method::GET, "/v1/tenant");
    me.expect(200);
    let me = me.json();
    assert_eq!(
        (me["tenant"].clone(), me["admin"].clone()),
        (json!("default"), json!(true))
    );
}

#[test]
fn parallel_creations_do_not_overshoot_the_quota() {
    let extra = format!(
        "[[tenants]]\nname = \"two\"\nkey_sha256 = \"{}\"\n[tenants.quotas]\nmax_sandboxes = 2\n",
        hash_key("two-key")
    );
    let (server, _cfg) = server_with(&extra);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    call(
                        &server,
                        "two-key",
                        Method::POST,
                        "/v1/sandboxes",
                        Some(&json!({})),
                    )
                    .status
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let created = statuses.iter().filter(|s| **s == 201).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((created, refused), (2, 4), "{statuses:?}");
    assert_eq!(ids_as(&server, "two-key").len(), 2);
}

/// Snapshots carry their owner: a tenant keeps using its snapshots after the sandbox is
/// deleted (list, get, restore, create-with-restore, delete, agentpod wake), also across a
/// restart, and another tenant gets 404 for each.
#[test]
fn snapshots_belong_to_their_tenant_after_the_sandbox_is_gone() {
    let (mut server, _cfg) = server_with("");
    let id = unique("owned");
    create_as(&server, ACME, &json!({ "id": id }));
    exec_as(&server, ACME, &id, "echo precious > /workspace/p").expect(200);
    let r = call(
        &server,
        ACME,
        Method::POST,
        &format!("/v1/sandboxes/{id}/snapshots"),
        Some(&json!({})),
    );
    r.expect(201);
    let snap = r.json();
    assert_eq!(snap["tenant"], "acme", "{snap}");
    let sid = snap["id"].as_str().expect("snapshot id").to_string();
    call(
        &server,
        ACME,
        Method::DELETE,
        &format!("/v1/sandboxes/{id}"),
        None,
    )
    .expect(204);
    server.restart();

    // The owner still sees it ...
    let list = call(
        &server,
        ACME,
        Method::GET,
        &format!("/v1/sandboxes/{id}/snapshots"),
        None,
    );
    list.expect(200);
    assert_eq!(
        list.json()["snapshots"][0]["id"],
        sid.as_str(),
        "{}",
        list.text()
    );
    call(
        &server,
        ACME2,
        Method::GET,
        &format!("/v1/snapshots/{sid}"),
        None,
    )
    .expect(200);
    // ... another tenant does not, whatever the route.
    call(
        &server,
        GLOBEX,
        Method::GET,
        &format!("/v1/sandboxes/{id}/snapshots"),
        None,
    )
    .expect_error(404, "not_found");
    call(
        &server,
        GLOBEX,
        Method::GET,
        &format!("/v1/snapshots/{sid}"),
        None,
    )
    .expect_error(404, "snapshot_not_found");
    call(
        &server,
        GLOBEX,
        Method::DELETE,
        &format!("/v1/snapshots/{sid}"),
        None,
    )
    .expect_error(404, "snapshot_not_found");
    let stolen = call(
        &server,
        GLOBEX,
        Method::POST,
        "/v1/sandboxes",
        Some(&json!({ "restore": sid })),
    );
    stolen.expect_error(404, "snapshot_not_found");
    // Not even by taking the deleted sandbox's id and asking for its latest snapshot.
    let taken = call(
        &server,
        GLOBEX,
        Method::POST,
        "/v1/sandboxes",
        Some(&json!({ "id": id, "restore": "latest" })),
    );
    taken.expect_error(404, "snapshot_not_found");
    create_as(&server, GLOBEX, &json!({ "id": id }));
    let r = call(
        &server,
        GLOBEX,
        Method::POST,
        &format!("/v1/sandboxes/{id}/restore"),
        Some(&json!({})),
    );
    r.expect_error(404, "snapshot_not_found");
    let list = call(
        &server,
        GLOBEX,
        Method::GET,
        &format!("/v1/sandboxes/{id}/snapshots"),
        None,
    );
    list.expect(200);
    assert_eq!(list.json()["snapshots"], json!([]), "{}", list.text());
    call(
        &server,
        GLOBEX,
        Method::DELETE,
        &format!("/v1/sandboxes/{id}"),
        None,
    )
    .expect(204);

    // The owner restores it into a new sandbox, then deletes it.
    let back = create_as(&server, ACME, &json!({ "restore": sid }));
    let back_id = back["id"].as_str().expect("id").to_string();
    let r = exec_as(&server, ACME, &back_id, "cat /workspace/p");
    r.expect(200);
    assert_eq!(r.json()["stdout"], "precious\n");
    call(
        &server,
        ACME,
        Method::DELETE,
        &format!("/v1/snapshots/{sid}"),
        None,
    )
    .expect(204);
    call(
        &server,
        ACME,
        Method::GET,
        &format!("/v1/snapshots/{sid}"),
        None,
    )
    .expect_error(404, "snapshot_not_found");

    // agentpod: wake after delete restores the last sync for its tenant, and only for it.
    let pod = unique("pod");
    let dir = "/home/user/workspace";
    let r = call(
        &server,
        ACME,
        Method::POST,
        "/compat/agentpod/sandbox",
        Some(&json!({ "id": pod, "userId": "u", "directory": dir })),
    );
    r.expect(200);
    exec_as(&server, ACME, &pod, &format!("echo synced > {dir}/s")).expect(200);
    call(
        &server,
        ACME,
        Method::POST,
        &format!("/compat/agentpod/sandbox/{pod}/sync"),
        None,
    )
    .expect(200);
    call(
        &server,
        ACME,
        Method::DELETE,
        &format!("/v1/sandboxes/{pod}"),
        None,
    )
    .expect(204);
    let r = call(
        &server,
        GLOBEX,
        Method::POST,
        &format!("/compat/agentpod/sandbox/{pod}/wake"),
        None,
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = call(
        &server,
        ACME,
        Method::POST,
        &format!("/compat/agentpod/sandbox/{pod}/wake"),
        None,
    );
    r.expect(200);
    assert_eq!(r.json()["restoredFiles"], 1, "{}", r.text());
    let r = exec_as(&server, ACME, &pod, &format!("cat {dir}/s"));
    r.expect(200);
    assert_eq!(r.json()["stdout"], "synced\n");
    assert_eq!(ids_as(&server, GLOBEX), Vec::<String>::new());
}
