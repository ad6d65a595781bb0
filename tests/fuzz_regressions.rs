//! What the schemathesis run (`scripts/fuzz.sh`) found, kept as plain tests so they stay
//! fixed without the fuzzer: each answered a 5xx or a shape the OpenAPI document did not
//! describe.

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;

#[test]
fn fuzz_findings_answer_documented_4xx() {
    let server = Server::start();
    let id = server.new_sandbox();

    // A pty request that is not a WebSocket upgrade: the API's JSON error, not plain text.
    let r = server.request(Method::GET, &format!("/v1/sandboxes/{id}/pty"));
    r.expect_error(400, "bad_request");
    let r = server.request(Method::POST, &format!("/v1/sandboxes/{id}/pty"));
    assert_eq!(r.status, 405, "{}", r.text());

    // Removing a mount point (EBUSY) was a 500 `internal`: refused as not permitted.
    let r = server.request(
        Method::DELETE,
        &format!("{}&recursive=false", Server::files_path(&id, "", "/proc")),
    );
    r.expect_error(403, "permission_denied");
    // The sandbox is unharmed.
    assert_eq!(
        server.run_ok(&id, "ls /proc/self/status"),
        "/proc/self/status\n"
    );

    // Create with a snapshot that does not exist: 404, as the document now says.
    let r = server.request_json(
        Method::POST,
        "/v1/sandboxes",
        &json!({"id": "fuzz-never-snapshotted", "restore": "latest"}),
    );
    r.expect_error(404, "snapshot_not_found");
    let doc = server.request(Method::GET, "/openapi.json").json();
    let create = &doc["paths"]["/v1/sandboxes"]["post"]["responses"];
    assert!(
        create.get("404").is_some(),
        "create documents 404: {create}"
    );
    let count = &doc["components"]["schemas"]["RunResult"]["properties"]["execution_count"];
    assert!(
        count.to_string().contains("null"),
        "execution_count may be null: {count}"
    );
}
