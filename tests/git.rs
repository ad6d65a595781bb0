//! `POST /v1/sandboxes/{id}/git/clone` against a git smart-HTTP server the test runs in a
//! network namespace of its own, reached from the sandbox only through egress: clone and pull
//! with a token that never shows in argv, `.git/config`, the answer or the server's log.

mod common;

use common::netns::{NetNs, Repo, GIT_SERVER};
use common::{assert_contained, unique, Server};
use reqwest::Method;
use serde_json::{json, Value};

/// A namespace serving `<tmp>/proj.git` on port 8080, with basic auth when `token` is given.
struct GitFixture {
    ns: NetNs,
    repo: Repo,
    _dir: tempfile::TempDir,
}

impl GitFixture {
    fn new(token: Option<&str>, delay_ms: u32) -> GitFixture {
        let mut ns = NetNs::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::new(dir.path(), "proj");
        let script = dir.path().join("server.py");
        std::fs::write(&script, GIT_SERVER).expect("write server");
        let root = dir.path().to_str().expect("utf-8").to_string();
        let delay = delay_ms.to_string();
        let mut env = vec![("GIT_SERVER_DELAY_MS", delay.as_str())];
        if let Some(t) = token {
            env.push(("GIT_SERVER_TOKEN", t));
        }
        ns.spawn(
            &["python3", script.to_str().expect("utf-8"), &root, "8080"],
            &env,
            &dir.path().join("server.log"),
        );
        ns.wait_listening(8080);
        GitFixture {
            ns,
            repo,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://{}:8080/proj.git", self.ns.ns_addr)
    }

    /// An egress sandbox allowed to reach the server, checked to be contained.
    fn sandbox(&self, server: &Server) -> String {
        let sb = server.create(&json!({"network": "egress", "allow": [self.ns.ns_addr]}));
        let id = sb["id"].as_str().expect("id").to_string();
        assert_contained(server, &id);
        id
    }
}

fn clone(server: &Server, id: &str, body: &Value) -> common::Resp {
    server.request_json(Method::POST, &format!("/v1/sandboxes/{id}/git/clone"), body)
}

#[test]
fn clone_and_pull_with_a_token_that_does_not_leak() {
    let token = unique("tok").replace('-', "");
    let fx = GitFixture::new(Some(&token), 1500);
    let server = Server::start();
    let id = fx.sandbox(&server);

    // Without a token, or with a wrong one, the server refuses and so does the call.
    let r = clone(&server, &id, &json!({"url": fx.url()}));
    r.expect_error(502, "git_failed");
    let wrong = format!("{token}x");
    let r = clone(&server, &id, &json!({"url": fx.url(), "token": wrong}));
    r.expect_error(502, "git_failed");
    assert!(
        !r.text().contains(&wrong),
        "the wrong token is echoed: {}",
        r.text()
    );

    // A slow clone with the right token; meanwhile, nothing in the sandbox's process list
    // carries the token.
    let answer = std::thread::scope(|s| {
        let cloning = s.spawn(|| clone(&server, &id, &json!({"url": fx.url(), "token": token})));
        let mut saw_git = false;
        while !cloning.is_finished() {
            let ps = server.exec(
                &id,
                "ps -eww -o args; cat /proc/[0-9]*/cmdline | tr '\\0' ' '",
            );
            assert!(
                !ps.stdout.contains(&token),
                "token in the process list:\n{}",
                ps.stdout
            );
            saw_git |= ps.stdout.contains("git-remote-http") || ps.stdout.contains("git clone");
        }
        assert!(
            saw_git,
            "never saw git running: the process-list check proved nothing"
        );
        cloning.join().expect("clone thread")
    });
    answer.expect(200);
    assert!(!answer.text().contains(&token));
    let v = answer.json();
    assert_eq!(v["action"], "clone");
    assert_eq!(v["dir"], "/workspace/proj");
    assert_eq!(v["branch"], "main");
    assert_eq!(v["commit"], fx.repo.head());
    assert_eq!(server.run_ok(&id, "cat /workspace/proj/README"), "first\n");

    let config = server.run_ok(&id, "cat /workspace/proj/.git/config");
    assert!(
        config.contains(&fx.url()),
        "origin is the plain URL:\n{config}"
    );
    let grep = server.exec(&id, &format!("grep -r -l '{token}' /workspace /root /tmp"));
    assert_eq!(grep.exit_code, 1, "the token was written to disk: {grep:?}");

    // A new commit on the server; the same call pulls it.
    let second = fx.repo.commit("second\n");
    let r = clone(&server, &id, &json!({"url": fx.url(), "token": token}));
    r.expect(200);
    let v = r.json();
    assert_eq!(v["action"], "pull");
    assert_eq!(v["commit"], second);
    assert_eq!(server.run_ok(&id, "cat /workspace/proj/README"), "second\n");

    // Credentials in the URL are taken out of it the same way.
    let with_creds = fx
        .url()
        .replacen("http://", &format!("http://x-access-token:{token}@"), 1);
    let r = clone(
        &server,
        &id,
        &json!({"url": with_creds, "dir": "/workspace/other", "depth": 1}),
    );
    r.expect(200);
    assert_eq!(r.json()["commit"], second);
    let config = server.run_ok(&id, "cat /workspace/other/.git/config");
    assert!(!config.contains(&token), "token in .git/config:\n{config}");
    // The shallow clone pulls two new commits and fast-forwards.
    fx.repo.commit("third\n");
    let fourth = fx.repo.commit("fourth\n");
    let r = clone(
        &server,
        &id,
        &json!({"url": fx.url(), "dir": "/workspace/other", "depth": 1, "token": token}),
    );
    r.expect(200);
    assert_eq!(
        (r.json()["action"].as_str(), r.json()["commit"].as_str()),
        (Some("pull"), Some(fourth.as_str()))
    );
    assert_eq!(
        server.run_ok(&id, "cat /workspace/other/README"),
        "fourth\n"
    );

    assert!(!server.log().contains(&token), "token in the server's log");
    // Nor in the logs beside each sandbox (agent, slirp4netns).
    for entry in std::fs::read_dir(server.data_dir().join("sandboxes")).expect("sandboxes") {
        for f in std::fs::read_dir(entry.expect("entry").path()).expect("sandbox dir") {
            let p = f.expect("file").path();
            if p.extension().is_some_and(|e| e == "log") {
                let text = String::from_utf8_lossy(&std::fs::read(&p).expect("log")).into_owned();
                assert!(!text.contains(&token), "token in {p:?}");
            }
        }
    }
}

#[test]
fn clone_of_a_branch_without_auth() {
    let fx = GitFixture::new(None, 0);
    common::netns::git(&fx.repo.work, &["checkout", "-q", "-b", "feature"]);
    let feature = fx.repo.commit("feature\n");
    let server = Server::start();
    let id = fx.sandbox(&server);
    let r = clone(
        &server,
        &id,
        &json!({"url": fx.url(), "branch": "feature", "dir": "/tmp/f"}),
    );
    r.expect(200);
    let v = r.json();
    assert_eq!(
        (v["branch"].as_str(), v["commit"].as_str()),
        (Some("feature"), Some(feature.as_str()))
    );

    // A pull without a branch follows the branch checked out, not the remote's HEAD (main).
    fx.repo.commit("feature 2\n");
    let next = fx.repo.commit("feature 3\n");
    let r = clone(&server, &id, &json!({"url": fx.url(), "dir": "/tmp/f"}));
    r.expect(200);
    let v = r.json();
    assert_eq!(v["action"], "pull");
    assert_eq!(
        (v["branch"].as_str(), v["commit"].as_str()),
        (Some("feature"), Some(next.as_str()))
    );
    assert_eq!(server.run_ok(&id, "cat /tmp/f/README"), "feature 3\n");
}

#[test]
fn clone_needs_egress_and_an_allow_entry() {
    let fx = GitFixture::new(None, 0);
    let server = Server::start();
    let none = server.new_sandbox();
    clone(&server, &none, &json!({"url": fx.url()})).expect_error(502, "git_failed");
    let other = server.create(&json!({"network": "egress", "allow": ["192.0.2.77"]}));
    let other = other["id"].as_str().expect("id");
    clone(&server, other, &json!({"url": fx.url()})).expect_error(502, "git_failed");
}

#[test]
fn bad_clone_requests_are_refused() {
    let server = Server::start();
    let id = server.new_sandbox();
    for body in [
        json!({"url": "file:///etc"}),
        json!({"url": "ext::sh -c touch% /tmp/pwned"}),
        json!({"url": "/srv/repo.git"}),
        json!({"url": "--upload-pack=touch /tmp/pwned"}),
        json!({"url": "http://h/r.git", "branch": "--upload-pack=x"}),
        json!({"url": "http://h/r.git", "dir": "relative"}),
        json!({"url": "http://h/r.git", "depth": 0}),
    ] {
        clone(&server, &id, &body).expect_error(400, "bad_request");
    }
    clone(&server, &id, &json!({"nope": 1})).expect_error(400, "invalid_json");
    clone(&server, "missing", &json!({"url": "http://h/r.git"})).expect_error(404, "not_found");
    assert_eq!(server.exec(&id, "test -e /tmp/pwned").exit_code, 1);
}
