//! `GET /docs`: the OpenAPI document rendered as one browsable HTML page, server-side and
//! self-contained (inline CSS, no script, nothing fetched from elsewhere): every operation
//! grouped by tag with its summary, description, parameters, request body and answers, then
//! every schema of the components. Rendered once, on the first request.

use std::fmt::Write;
use std::sync::OnceLock;

use axum::response::Html;
use serde_json::Value;

static PAGE: OnceLock<String> = OnceLock::new();

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "patch", "options", "head", "trace",
];

/// This page: the API reference as HTML.
#[utoipa::path(get, path = "/docs", tag = "ops", operation_id = "docs",
    responses((status = 200, description = "The OpenAPI document as a browsable HTML page", content_type = "text/html", body = String)))]
pub async fn page() -> Html<&'static str> {
    if let Some(page) = PAGE.get() {
        return Html(page.as_str());
    }
    let doc = crate::openapi::serve().await;
    let value = serde_json::to_value(doc.0).unwrap_or(Value::Null);
    Html(PAGE.get_or_init(|| render(&value)).as_str())
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Prose of the document: escaped, `code` spans kept, blank lines as paragraph breaks.
fn prose(s: &str) -> String {
    let mut out = String::new();
    for para in s.split("\n\n").filter(|p| !p.trim().is_empty()) {
        let _ = write!(out, "<p>{}</p>", inline(para.trim()));
    }
    out
}

/// One line of prose: escaped, `code` spans kept.
fn inline(s: &str) -> String {
    let mut out = String::new();
    for (i, part) in esc(s).split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}

fn anchor(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn ref_name(r: &str) -> &str {
    r.rsplit('/').next().unwrap_or(r)
}

/// A short type of a schema, schemas named by `$ref` linked to their section.
fn type_of(schema: &Value) -> String {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = ref_name(r);
        return format!("<a href=\"#schema-{}\">{}</a>", anchor(name), esc(name));
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(list) = schema.get(key).and_then(Value::as_array) {
            let sep = if key == "allOf" { " &amp; " } else { " | " };
            return list.iter().map(type_of).collect::<Vec<_>>().join(sep);
        }
    }
    let base = match schema.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" | "),
        _ => String::new(),
    };
    let base = if base.contains("array") {
        match schema.get("items") {
            Some(items) => base.replace("array", &format!("array of {}", type_of(items))),
            None => base,
        }
    } else {
        esc(&base)
    };
    let mut out = if base.is_empty() {
        "any".to_string()
    } else {
        base
    };
    if let Some(f) = schema.get("format").and_then(Value::as_str) {
        let _ = write!(out, " ({})", esc(f));
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        let vals: Vec<String> = e.iter().map(|v| esc(&v.to_string())).collect();
        let _ = write!(out, ": {}", vals.join(", "));
    }
    out
}

/// A schema in full: a property table for objects, else its type.
fn schema_block(schema: &Value) -> String {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return format!("<p class=\"type\">{}</p>", type_of(schema));
    };
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out = String::from(
        "<table><tr><th>field</th><th>type</th><th>required</th><th>description</th></tr>",
    );
    for (name, prop) in props {
        let desc = prop
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("");
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            type_of(prop),
            if required.contains(&name.as_str()) {
                "yes"
            } else {
                ""
            },
            prose(desc)
        );
    }
    out.push_str("</table>");
    out
}

fn content_block(content: Option<&Value>) -> String {
    let mut out = String::new();
    if let Some(content) = content.and_then(Value::as_object) {
        for (mime, media) in content {
            let _ = write!(out, "<div class=\"mime\"><code>{}</code></div>", esc(mime));
            if let Some(schema) = media.get("schema") {
                out.push_str(&schema_block(schema));
            }
        }
    }
    out
}

/// Resolves a `$ref` to `#/components/responses/X` (or answers `v` itself).
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let mut at = doc;
            for part in r.trim_start_matches("#/").split('/') {
                at = &at[part];
            }
            at
        }
        None => v,
    }
}

fn operation(doc: &Value, out: &mut String, method: &str, path: &str, op: &Value) {
    let id = op
        .get("operationId")
        .and_then(Value::as_str)
        .unwrap_or(path);
    let summary = op.get("summary").and_then(Value::as_str).unwrap_or("");
    let _ = write!(
        out,
        "<section class=\"op\" id=\"op-{}\"><h3><span class=\"m {method}\">{}</span> <code>{}</code></h3><p class=\"summary\">{}</p>",
        anchor(id),
        method.to_uppercase(),
        esc(path),
        inline(summary)
    );
    if let Some(d) = op.get("description").and_then(Value::as_str) {
        out.push_str(&prose(d));
    }
    if op
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
    {
        out.push_str("<p class=\"note\">No token needed.</p>");
    }
    if let Some(params) = op.get("parameters").and_then(Value::as_array) {
        out.push_str("<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>type</th><th>required</th><th>description</th></tr>");
        for p in params {
            let p = resolve(doc, p);
            let _ = write!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(p["name"].as_str().unwrap_or("")),
                esc(p["in"].as_str().unwrap_or("")),
                p.get("schema").map(type_of).unwrap_or_default(),
                if p["required"].as_bool().unwrap_or(false) {
                    "yes"
                } else {
                    ""
                },
                prose(p["description"].as_str().unwrap_or(""))
            );
        }
        out.push_str("</table>");
    }
    if let Some(body) = op.get("requestBody") {
        let body = resolve(doc, body);
        out.push_str("<h4>Request body</h4>");
        if let Some(d) = body.get("description").and_then(Value::as_str) {
            out.push_str(&prose(d));
        }
        out.push_str(&content_block(body.get("content")));
    }
    if let Some(responses) = op.get("responses").and_then(Value::as_object) {
        out.push_str("<h4>Answers</h4><dl>");
        for (status, resp) in responses {
            let resp = resolve(doc, resp);
            let _ = write!(
                out,
                "<dt>{}</dt><dd>{}{}</dd>",
                esc(status),
                prose(resp["description"].as_str().unwrap_or("")),
                content_block(resp.get("content"))
            );
        }
        out.push_str("</dl>");
    }
    out.push_str("</section>");
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;display:flex;color:#1d2330}\
nav{width:18rem;flex:none;height:100vh;overflow:auto;position:sticky;top:0;background:#f3f4f7;padding:1rem;box-sizing:border-box;font-size:.85rem}\
nav a{display:block;color:#1d2330;text-decoration:none;padding:.1rem 0}nav h2{font-size:.9rem;margin:1rem 0 .3rem}\
main{padding:1rem 2rem;max-width:60rem}h3 code{font-size:1rem}.op{border-top:1px solid #ddd;padding:.5rem 0}\
.m{display:inline-block;min-width:4rem;text-align:center;border-radius:4px;color:#fff;font-size:.8rem;padding:.1rem .3rem;background:#666}\
.get{background:#2f7d32}.post{background:#1565c0}.put{background:#8d6e00}.patch{background:#6a1b9a}.delete{background:#c62828}\
table{border-collapse:collapse;margin:.3rem 0;font-size:.9rem}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}\
td p{margin:0}dt{font-weight:bold}code{background:#f3f4f7;padding:0 .2rem}.summary{font-weight:600}.note,.mime{color:#555;font-size:.85rem}";

/// The whole page of `doc`, an OpenAPI 3.1 document as JSON.
pub(crate) fn render(doc: &Value) -> String {
    let title = doc["info"]["title"].as_str().unwrap_or("API");
    let version = doc["info"]["version"].as_str().unwrap_or("");
    // Tags in the document's order, then any used but not declared.
    let mut tags: Vec<(String, String)> = doc["tags"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| {
                    (
                        t["name"].as_str().unwrap_or("").to_string(),
                        t["description"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ops: Vec<(String, &str, &str, &Value)> = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for method in METHODS {
                if let Some(op) = item.get(*method) {
                    let tag = op["tags"][0].as_str().unwrap_or("other").to_string();
                    if !tags.iter().any(|(t, _)| *t == tag) {
                        tags.push((tag.clone(), String::new()));
                    }
                    ops.push((tag, method, path.as_str(), op));
                }
            }
        }
    }
    let mut nav = String::new();
    let mut body = String::new();
    for (tag, desc) in &tags {
        let tagged: Vec<_> = ops.iter().filter(|(t, ..)| t == tag).collect();
        if tagged.is_empty() {
            continue;
        }
        let _ = write!(
            nav,
            "<h2><a href=\"#tag-{}\">{}</a></h2>",
            anchor(tag),
            esc(tag)
        );
        let _ = write!(
            body,
            "<h2 id=\"tag-{}\">{}</h2>{}",
            anchor(tag),
            esc(tag),
            prose(desc)
        );
        for (_, method, path, op) in tagged {
            let id = op
                .get("operationId")
                .and_then(Value::as_str)
                .unwrap_or(path);
            let _ = write!(
                nav,
                "<a href=\"#op-{}\">{} {}</a>",
                anchor(id),
                method.to_uppercase(),
                esc(path)
            );
            operation(doc, &mut body, method, path, op);
        }
    }
    if let Some(schemas) = doc["components"]["schemas"].as_object() {
        nav.push_str("<h2><a href=\"#schemas\">schemas</a></h2>");
        body.push_str("<h2 id=\"schemas\">Schemas</h2>");
        for (name, schema) in schemas {
            let _ = write!(
                nav,
                "<a href=\"#schema-{}\">{}</a>",
                anchor(name),
                esc(name)
            );
            let _ = write!(
                body,
                "<section class=\"op\" id=\"schema-{}\"><h3>{}</h3>",
                anchor(name),
                esc(name)
            );
            if let Some(d) = schema.get("description").and_then(Value::as_str) {
                body.push_str(&prose(d));
            }
            body.push_str(&schema_block(schema));
            body.push_str("</section>");
        }
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t} API</title>\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{STYLE}</style></head>\
<body><nav><strong>{t} {v}</strong>{nav}</nav><main><h1>{t} API <small>{v}</small></h1>{desc}\
<p>The machine-readable document: <a href=\"/openapi.json\">/openapi.json</a>.</p>{body}</main></body></html>",
        t = esc(title),
        v = esc(version),
        desc = prose(doc["info"]["description"].as_str().unwrap_or("")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_lists_every_operation_and_schema_escaped() {
        let doc = serde_json::json!({
            "openapi": "3.1.0",
            "info": {"title": "t<x>", "version": "1"},
            "tags": [{"name": "a", "description": "first"}],
            "paths": {"/v1/{id}": {"get": {"tags": ["a"], "operationId": "g", "summary": "Get `it`",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/S"}}}}}}}},
            "components": {"schemas": {"S": {"type": "object", "required": ["n"], "properties": {"n": {"type": ["integer", "null"]}}}}}
        });
        let html = render(&doc);
        assert!(html.contains("t&lt;x&gt;"), "{html}");
        assert!(html.contains("<code>/v1/{id}</code>"), "{html}");
        assert!(html.contains("href=\"#schema-S\""), "{html}");
        assert!(html.contains("integer | null"), "{html}");
        assert!(html.contains("Get <code>it</code>"), "{html}");
    }
}
