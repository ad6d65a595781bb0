//! A delete racing calls: clients run commands and read files in a sandbox while it is
//! deleted. Every call succeeds, or ends 404 `not_found` (it came after the delete) or 409
//! `interrupted` (the delete cut it, or it was waiting to reach the sandbox); never a 5xx.
//! Nothing of the sandbox is left, not even after a restart: a call that was waiting while
//! the delete ran used to start the sandbox again, record and files included.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::json;

/// Checks one answer of a call racing the delete.
#[track_caller]
fn check(what: &str, r: &Resp) {
    match r.status {
        200 | 204 => {}
        404 => r.expect_error(404, "not_found"),
        409 => {
            r.expect_error(409, "interrupted");
            assert!(r.text().contains("deleted"), "{what}: {}", r.text());
        }
        other => panic!("{what} racing a delete answered {other}: {}", r.text()),
    }
}

#[test]
fn a_delete_racing_calls_ends_them_cleanly_and_leaves_nothing() {
    let mut server = Server::start();
    let mut gone = Vec::new();
    for round in 0..4u64 {
        let id = unique("doomed");
        server.create(&json!({ "id": id }));
        server.put_file(&id, "/workspace/f.txt", b"payload");
        let stop = AtomicBool::new(false);
        let long: Mutex<Option<Resp>> = Mutex::new(None);
        std::thread::scope(|s| {
            // A command the delete cuts in the middle.
            s.spawn(|| {
                let r = server.request_json(
                    Method::POST,
                    &format!("/v1/sandboxes/{id}/exec"),
                    &json!({ "command": "sleep 30" }),
                );
                *long.lock().unwrap() = Some(r);
            });
            for _ in 0..3 {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let r = server.request_json(
                            Method::POST,
                            &format!("/v1/sandboxes/{id}/exec"),
                            &json!({ "command": "echo hi" }),
                        );
                        check("exec", &r);
                        // A download the delete cuts after its headers can only end
                        // short of its Content-Length: the client sees a broken body.
                        let path = Server::files_path(&id, "", "/workspace/f.txt");
                        match server.req(Method::GET, &path).send() {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                let body = r.bytes();
                                match (status, body) {
                                    (200, Ok(b)) => assert_eq!(&b[..], b"payload"),
                                    (200, Err(e)) => assert!(e.is_body() || e.is_decode(), "{e}"),
                                    (404 | 409, Ok(b)) => {
                                        let v: serde_json::Value =
                                            serde_json::from_slice(&b).expect("JSON error");
                                        let want = if status == 404 {
                                            "not_found"
                                        } else {
                                            "interrupted"
                                        };
                                        assert_eq!(v["error"]["code"], want, "{v}");
                                    }
                                    (other, b) => {
                                        panic!("file read racing a delete: {other} {b:?}")
                                    }
                                }
                            }
                            Err(e) => panic!("file read racing a delete: {e}"),
                        }
                    }
                });
            }
            server.wait_for_process(&id, "sleep 30");
            std::thread::sleep(Duration::from_millis(20 * round));
            server
                .request(Method::DELETE, &format!("/v1/sandboxes/{id}"))
                .expect(204);
            // Calls keep coming for a moment after the delete.
            std::thread::sleep(Duration::from_millis(100));
            stop.store(true, Ordering::Relaxed);
        });
        let long = long
            .into_inner()
            .unwrap()
            .expect("the long command answered");
        long.expect_error(409, "interrupted");
        assert!(
            long.text().contains("deleted during the call"),
            "{}",
            long.text()
        );
        // Nothing came back: no files, no record.
        assert!(
            !server.data_dir().join("sandboxes").join(&id).exists(),
            "the files of {id} are back"
        );
        assert!(!server.list_ids().contains(&id), "{id} is listed again");
        gone.push(id);
    }
    // Calls that found the sandbox before the delete and waited to reach it: a download in
    // progress holds a sleep back, and calls queue behind that sleep holding the sandbox's
    // handle; the delete runs meanwhile. Once the download ends they go on: they must not
    // start the deleted sandbox again. (The pauses only order the steps; nothing is timed.)
    let id = unique("queued");
    server.create(&json!({ "id": id, "keepalive_seconds": 0 }));
    server.put_file(&id, "/workspace/big.bin", &pseudo_random_bytes(32 << 20, 9));
    let mut download = server
        .req(
            Method::GET,
            &Server::files_path(&id, "", "/workspace/big.bin"),
        )
        .send()
        .expect("download");
    let mut first = [0u8; 1024];
    std::io::Read::read_exact(&mut download, &mut first).expect("first bytes");
    std::thread::scope(|s| {
        s.spawn(|| {
            let r = server.request(Method::POST, &format!("/v1/sandboxes/{id}/sleep"));
            check("sleep", &r);
        });
        std::thread::sleep(Duration::from_millis(200));
        for _ in 0..3 {
            s.spawn(|| {
                let r = server.request_json(
                    Method::POST,
                    &format!("/v1/sandboxes/{id}/exec"),
                    &json!({ "command": "echo hi" }),
                );
                check("exec queued behind a sleep", &r);
            });
        }
        std::thread::sleep(Duration::from_millis(200));
        server
            .request(Method::DELETE, &format!("/v1/sandboxes/{id}"))
            .expect(204);
        drop(download);
    });
    assert!(
        !server.data_dir().join("sandboxes").join(&id).exists(),
        "a queued call started {id} again after its delete"
    );
    assert!(!server.list_ids().contains(&id), "{id} is listed again");
    gone.push(id);
    // Nor after a restart (a record written again would bring it back).
    server.kill9();
    server.restart();
    let ids = server.list_ids();
    for id in &gone {
        assert!(!ids.contains(id), "{id} came back after a restart");
        assert!(!server.data_dir().join("sandboxes").join(id).exists());
    }
}
