//! The files API: binary-safe transfers, list/stat/mkdir/move/delete, path errors, and
//! agreement with what commands inside the sandbox see.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

fn stat(server: &Server, id: &str, path: &str) -> common::Resp {
    server.request(Method::GET, &Server::files_path(id, "/stat", path))
}

#[test]
fn all_byte_values_round_trip() {
    let server = Server::start();
    let id = server.new_sandbox();
    let bytes: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    server.put_file(&id, "/workspace/bytes.bin", &bytes);
    let r = server.request(
        Method::GET,
        &Server::files_path(&id, "", "/workspace/bytes.bin"),
    );
    r.expect(200);
    assert!(
        r.content_type.starts_with("application/octet-stream"),
        "content-type {:?}",
        r.content_type
    );
    assert_eq!(r.body, bytes);
    // Inside, the file has the same bytes.
    let dump = server.run_ok(
        &id,
        "od -An -v -tu1 /workspace/bytes.bin | tr -s ' \\n' ' '",
    );
    let inside: Vec<u8> = dump
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(inside, bytes);
}

#[test]
fn five_mib_random_blob_round_trips() {
    let server = Server::start();
    let id = server.new_sandbox();
    let blob = pseudo_random_bytes(5 << 20, 0x5eed);
    server.put_file(&id, "/workspace/blob.bin", &blob);
    let back = server.get_file(&id, "/workspace/blob.bin");
    assert_eq!(back.len(), blob.len());
    assert!(back == blob, "5 MiB blob came back different");
    assert_eq!(
        server.run_ok(&id, "wc -c < /workspace/blob.bin").trim(),
        (5u64 << 20).to_string()
    );
}

#[test]
fn empty_file_and_overwrite() {
    let server = Server::start();
    let id = server.new_sandbox();
    server.put_file(&id, "/workspace/e", b"");
    assert_eq!(server.get_file(&id, "/workspace/e"), b"");
    server.put_file(&id, "/workspace/o", b"a long first version");
    server.put_file(&id, "/workspace/o", b"short");
    assert_eq!(server.get_file(&id, "/workspace/o"), b"short");
    assert_eq!(server.run_ok(&id, "cat /workspace/o"), "short");
}

#[test]
fn put_creates_parent_directories() {
    let server = Server::start();
    let id = server.new_sandbox();
    server.put_file(&id, "/workspace/a/b/c/d.txt", b"deep");
    assert_eq!(server.get_file(&id, "/workspace/a/b/c/d.txt"), b"deep");
    let r = stat(&server, &id, "/workspace/a/b");
    r.expect(200);
    assert_eq!(r.json()["type"], "dir");
    server.put_file(&id, "/tmp/x/y.txt", b"tmp too");
    assert_eq!(server.run_ok(&id, "cat /tmp/x/y.txt"), "tmp too");
}

#[test]
fn unusual_names_are_encoded() {
    let server = Server::start();
    let id = server.new_sandbox();
    let path = "/workspace/dir with space/ü & ?#=%.txt";
    server.put_file(&id, path, b"odd");
    assert_eq!(server.get_file(&id, path), b"odd");
    let out = server.run_ok(&id, "cat '/workspace/dir with space/ü & ?#=%.txt'");
    assert_eq!(out, "odd");
}

#[test]
fn get_missing_is_404_and_directory_is_400() {
    let server = Server::start();
    let id = server.new_sandbox();
    server
        .request(Method::GET, &Server::files_path(&id, "", "/workspace/nope"))
        .expect_error(404, "not_found");
    server
        .request(Method::GET, &Server::files_path(&id, "", "/workspace"))
        .expect_error(400, "is_a_directory");
}

#[test]
fn relative_and_nul_paths_are_invalid() {
    let server = Server::start();
    let id = server.new_sandbox();
    for bad in ["relative.txt", "workspace/x", "./x", "/workspace/a\0b"] {
        for route in ["", "/list", "/stat"] {
            server
                .request(Method::GET, &Server::files_path(&id, route, bad))
                .expect_error(400, "invalid_path");
        }
        server
            .request_bytes(
                Method::PUT,
                &Server::files_path(&id, "", bad),
                b"x".to_vec(),
            )
            .expect_error(400, "invalid_path");
        server
            .request(Method::DELETE, &Server::files_path(&id, "", bad))
            .expect_error(400, "invalid_path");
        server
            .request_json(
                Method::POST,
                &format!("/v1/sandboxes/{id}/files/mkdir"),
                &json!({ "path": bad }),
            )
            .expect_error(400, "invalid_path");
        server
            .request_json(
                Method::POST,
                &format!("/v1/sandboxes/{id}/files/move"),
                &json!({ "from": bad, "to": "/workspace/y" }),
            )
            .expect_error(400, "invalid_path");
    }
}

#[test]
fn list_entries_sorted_with_metadata() {
    let server = Server::start();
    let id = server.new_sandbox();
    server.put_file(&id, "/workspace/l/b.txt", b"hello");
    server.put_file(&id, "/workspace/l/a.txt", b"");
    server.run_ok(
        &id,
        "cd /workspace/l && mkdir sub && ln -s a.txt link && chmod 640 a.txt && \
         TZ=UTC touch -d '2020-01-02 03:04:05' b.txt",
    );
    let r = server.request(
        Method::GET,
        &Server::files_path(&id, "/list", "/workspace/l"),
    );
    r.expect(200);
    let v = r.json();
    assert_eq!(v["path"], "/workspace/l", "{v}");
    let entries = v["entries"].as_array().expect("entries");
    let names: Vec<&str> = entries
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a.txt", "b.txt", "link", "sub"], "{v}");
    let types: Vec<&str> = entries
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["file", "file", "symlink", "dir"], "{v}");
    for e in entries {
        let name = e["name"].as_str().unwrap();
        assert_eq!(e["path"], format!("/workspace/l/{name}"), "{e}");
        assert!(e["size"].is_u64(), "{e}");
        assert!(e["mode"].is_u64(), "{e}");
        assert!(
            e["modified_at"].as_str().and_then(parse_utc).is_some(),
            "{e}"
        );
    }
    assert_eq!(entries[0]["mode"], 0o640, "{}", entries[0]);
    assert_eq!(entries[0]["size"], 0);
    assert_eq!(entries[1]["size"], 5);
    let mtime = entries[1]["modified_at"]
        .as_str()
        .and_then(parse_utc)
        .unwrap();
    assert!((mtime - 1_577_934_245.0).abs() < 1.0, "{}", entries[1]);

    server
        .request(
            Method::GET,
            &Server::files_path(&id, "/list", "/workspace/l/b.txt"),
        )
        .expect_error(400, "not_a_directory");
    server
        .request(
            Method::GET,
            &Server::files_path(&id, "/list", "/workspace/none"),
        )
        .expect_error(404, "not_found");
}

#[test]
fn stat_file_dir_symlink_missing() {
    let server = Server::start();
    let id = server.new_sandbox();
    server.put_file(&id, "/workspace/s.txt", b"12345678");
    server.run_ok(
        &id,
        "ln -s /nowhere /workspace/dangling && chmod 600 /workspace/s.txt",
    );
    let r = stat(&server, &id, "/workspace/s.txt");
    r.expect(200);
    let e: Value = r.json();
    assert_eq!(e["name"], "s.txt", "{e}");
    assert_eq!(e["path"], "/workspace/s.txt", "{e}");
    assert_eq!(e["type"], "file", "{e}");
    assert_eq!(e["size"], 8, "{e}");
    assert_eq!(e["mode"], 0o600, "{e}");
    let r = stat(&server, &id, "/workspace");
    r.expect(200);
    assert_eq!(r.json()["type"], "dir");
    // Symlinks are not followed, even dangling ones.
    let r = stat(&server, &id, "/workspace/dangling");
    r.expect(200);
    assert_eq!(r.json()["type"], "symlink");
    stat(&server, &id, "/workspace/missing").expect_error(404, "not_found");
}

#[test]
fn mkdir_with_parents() {
    let server = Server::start();
    let id = server.new_sandbox();
    server
        .request_json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/files/mkdir"),
            &json!({ "path": "/workspace/m/n/o", "parents": true }),
        )
        .expect(204);
    let r = stat(&server, &id, "/workspace/m/n/o");
    r.expect(200);
    assert_eq!(r.json()["type"], "dir");
    assert_eq!(
        server.run_ok(&id, "test -d /workspace/m/n/o && echo yes"),
        "yes\n"
    );
}

#[test]
fn move_renames() {
    let server = Server::start();
    let id = server.new_sandbox();
    server.put_file(&id, "/workspace/mv/src.txt", b"moving");
    server.run_ok(&id, "mkdir -p /workspace/dst");
    server
        .request_json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/files/move"),
            &json!({ "from": "/workspace/mv/src.txt", "to": "/workspace/dst/new.txt" }),
        )
        .expect(204);
    server
        .request(
            Method::GET,
            &Server::files_path(&id, "", "/workspace/mv/src.txt"),
        )
        .expect_error(404, "not_found");
    assert_eq!(server.get_file(&id, "/workspace/dst/new.txt"), b"moving");
    // Directories move too.
    server
        .request_json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/files/move"),
            &json!({ "from": "/workspace/dst", "to": "/workspace/dst2" }),
        )
        .expect(204);
    assert_eq!(server.get_file(&id, "/workspace/dst2/new.txt"), b"moving");
    server
        .request_json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/files/move"),
            &json!({ "from": "/workspace/ghost", "to": "/workspace/x" }),
        )
        .expect_error(404, "not_found");
}

#[test]
fn delete_files_and_directories() {
    let server = Server::start();
    let id = server.new_sandbox();
    let del = |path: &str, recursive: bool| {
        let mut p = Server::files_path(&id, "", path);
        if recursive {
            p.push_str("&recursive=true");
        }
        server.request(Method::DELETE, &p)
    };
    server.put_file(&id, "/workspace/f.txt", b"x");
    del("/workspace/f.txt", false).expect(204);
    stat(&server, &id, "/workspace/f.txt").expect_error(404, "not_found");
    del("/workspace/f.txt", false).expect_error(404, "not_found");

    server.put_file(&id, "/workspace/tree/a/b/c.txt", b"x");
    server.put_file(&id, "/workspace/tree/d.txt", b"x");
    del("/workspace/tree", false).expect_error(409, "not_empty");
    assert_eq!(server.get_file(&id, "/workspace/tree/a/b/c.txt"), b"x");
    del("/workspace/tree", true).expect(204);
    stat(&server, &id, "/workspace/tree").expect_error(404, "not_found");
    assert_eq!(
        server.exec(&id, "test -e /workspace/tree").exit_code,
        1,
        "tree still visible inside"
    );

    server.run_ok(&id, "mkdir /workspace/empty");
    del("/workspace/empty", false).expect(204);
    stat(&server, &id, "/workspace/empty").expect_error(404, "not_found");

    // Deleting a symlink removes the link, not its target.
    server.put_file(&id, "/workspace/target.txt", b"keep");
    server.run_ok(&id, "ln -s target.txt /workspace/ln");
    del("/workspace/ln", false).expect(204);
    assert_eq!(server.get_file(&id, "/workspace/target.txt"), b"keep");
}

#[test]
fn files_api_and_exec_see_the_same_files() {
    let server = Server::start();
    let id = server.new_sandbox();
    server.put_file(&id, "/workspace/from-api.txt", b"written by the API\n");
    assert_eq!(
        server.run_ok(&id, "cat /workspace/from-api.txt"),
        "written by the API\n"
    );
    assert_eq!(
        server.run_ok(&id, "cat from-api.txt"),
        "written by the API\n"
    );
    server.run_ok(
        &id,
        "printf 'abc\\000def\\377' > /workspace/from-exec.bin && echo tmp > /tmp/t.txt",
    );
    assert_eq!(
        server.get_file(&id, "/workspace/from-exec.bin"),
        b"abc\0def\xff"
    );
    assert_eq!(server.get_file(&id, "/tmp/t.txt"), b"tmp\n");
    // A file made inside is owned by root there and visible with the right size.
    let r = stat(&server, &id, "/workspace/from-exec.bin");
    r.expect(200);
    assert_eq!(r.json()["size"], 8);
}

/// An upload is all or nothing: the file keeps its acknowledged contents until a new upload
/// completes, even when the server is killed mid-upload, and keeps its owner and mode.
#[test]
fn interrupted_upload_keeps_the_previous_contents() {
    use std::io::Read;
    struct Slow {
        sent: usize,
    }
    impl Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.sent >= 64 << 20 {
                return Ok(0);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            let n = buf.len().min(64 * 1024);
            buf[..n].fill(b'x');
            self.sent += n;
            Ok(n)
        }
    }
    let mut server = Server::start();
    let id = server.new_sandbox();
    server.put_file(&id, "/workspace/keep.txt", b"acknowledged");
    server.run_ok(
        &id,
        "chown 1000:1000 /workspace/keep.txt && chmod 600 /workspace/keep.txt",
    );
    let url = server.url(&Server::files_path(&id, "", "/workspace/keep.txt"));
    let upload = std::thread::spawn(move || {
        reqwest::blocking::Client::new()
            .put(url)
            .body(reqwest::blocking::Body::new(Slow { sent: 0 }))
            .send()
            .map(|r| r.status().as_u16())
    });
    std::thread::sleep(std::time::Duration::from_millis(600));
    server.kill9();
    let _ = upload.join();
    server.restart();
    assert_eq!(server.get_file(&id, "/workspace/keep.txt"), b"acknowledged");
    assert_eq!(
        server
            .run_ok(&id, "stat -c '%u %g %a' /workspace/keep.txt")
            .trim(),
        "1000 1000 600"
    );
    // No half-written temporary file is left visible in the directory.
    let listing = server.run_ok(&id, "ls -A /workspace");
    assert_eq!(listing.trim(), "keep.txt", "{listing}");
    // A complete upload replaces it and keeps owner and mode.
    server.put_file(&id, "/workspace/keep.txt", b"new");
    assert_eq!(server.get_file(&id, "/workspace/keep.txt"), b"new");
    assert_eq!(
        server
            .run_ok(&id, "stat -c '%u %g %a' /workspace/keep.txt")
            .trim(),
        "1000 1000 600"
    );
}
