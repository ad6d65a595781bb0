//! A few seconds of `sandpit bench-load` (the bounded load test, issue 7 part 6): 16
//! concurrent clients on 4 sandboxes of a server it starts itself, mixed exec, file upload
//! and download, directory listing and sandbox get/list. Asserts that every answer was right
//! and every sandbox still answers afterwards; never asserts a time.

mod common;

use std::process::Command;

#[test]
fn short_load_run_has_no_errors() {
    let out = Command::new(common::BIN)
        .args([
            "bench-load",
            "--clients",
            "16",
            "--sandboxes",
            "4",
            "--seconds",
            "4",
            "--json",
        ])
        .env_remove("SANDPIT_AUTH_TOKEN")
        .output()
        .expect("run sandpit bench-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench-load failed: {stdout}\n{stderr}"
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("bench-load printed no JSON ({e}): {stdout}\n{stderr}"));
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["sandboxes_not_answering_after"], 0, "{report}");
    assert_eq!(report["sandboxes"], 4, "{report}");
    let requests = report["requests"].as_u64().unwrap_or(0);
    assert!(requests >= 16, "too few requests were made: {report}");
    // Every kind of request of the mix was answered as expected at least once.
    let ok = &report["outcomes"];
    assert!(ok["200"].as_u64().unwrap_or(0) > 0, "{report}");
    assert!(
        ok["204"].as_u64().unwrap_or(0) > 0,
        "no upload succeeded: {report}"
    );
    assert!(
        report["server_rss_kib"]["after"].as_u64().unwrap_or(0) > 0,
        "{report}"
    );
}
