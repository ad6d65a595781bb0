//! `GET /docs`: the OpenAPI document as a browsable HTML page, served without a token and
//! listing every path and operation of `/openapi.json`.

mod common;

use common::*;
use reqwest::Method;
use serde_json::Value;

#[test]
fn docs_page_lists_every_path_without_a_token() {
    let server = Server::start_with(ServerOpts {
        token: Some(unique("tok")),
        ..Default::default()
    });
    let r = server.send(server.req_anon(Method::GET, "/docs"));
    assert_eq!(r.status, 200, "GET /docs without a token: {}", r.text());
    assert!(
        r.content_type.starts_with("text/html"),
        "content type {:?}",
        r.content_type
    );
    let page = r.text();
    assert!(page.starts_with("<!doctype html>"), "{:.200}", page);
    // Self-contained: nothing loaded from elsewhere.
    for needle in ["<script", "src=\"http", "href=\"http", "@import"] {
        assert!(!page.contains(needle), "the page loads something: {needle}");
    }
    let doc: Value = server
        .send(server.req_anon(Method::GET, "/openapi.json"))
        .json();
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.contains_key("/docs"), "/docs is in the document");
    for (path, item) in paths {
        assert!(
            page.contains(&format!("<code>{path}</code>")),
            "the page lacks {path}"
        );
        for (method, op) in item.as_object().expect("path item") {
            let Some(id) = op["operationId"].as_str() else {
                continue;
            };
            let anchor: String = id
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            assert!(
                page.contains(&format!("id=\"op-{anchor}\"")),
                "the page lacks {method} {path}"
            );
            if let Some(summary) = op["summary"].as_str() {
                let first = summary
                    .split(['`', '&', '<', '>', '"', '\''])
                    .next()
                    .unwrap_or("");
                assert!(
                    page.contains(first),
                    "the page lacks the summary of {method} {path}: {summary}"
                );
            }
        }
    }
    for schema in doc["components"]["schemas"]
        .as_object()
        .expect("schemas")
        .keys()
    {
        assert!(
            page.contains(&format!("id=\"schema-{schema}\"")),
            "the page lacks schema {schema}"
        );
    }
    // The document says /docs needs no token, and a token is not refused either.
    assert_eq!(
        doc["paths"]["/docs"]["get"]["security"],
        serde_json::json!([])
    );
    assert_eq!(server.request(Method::GET, "/docs").status, 200);
}
