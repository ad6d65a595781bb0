//! `sandpit bench-load`: a bounded load test over loopback. Many concurrent clients drive
//! many sandboxes for a fixed time with a mix of exec, file upload/download, directory
//! listing and sandbox get/list requests; every answer is checked (status and content), and
//! the run reports requests served, errors by status, latency percentiles and the server's
//! RSS before and after. Starts its own server unless `--server`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use crate::bench::{client, start_server};

#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Use a running server instead of starting one (e.g. http://127.0.0.1:8787).
    #[arg(long)]
    server: Option<String>,
    /// With `--server`: the server's pid, to read its RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Concurrent clients (one thread and one keep-alive connection each).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Sandboxes the clients share (client i works on sandbox i mod N).
    #[arg(long, default_value_t = 32)]
    sandboxes: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Print the result as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// What one client saw.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    /// Answers as expected, by status.
    outcomes: BTreeMap<String, u64>,
    /// Failures by status ("503", ...), "transport" or "wrong_answer".
    errors: BTreeMap<String, u64>,
    /// The first few failures, for the report.
    examples: Vec<String>,
}

impl Tally {
    fn record(&mut self, op: &str, took: Duration, outcome: Result<u16, String>) {
        self.latencies.push(took);
        match outcome {
            Ok(status) => *self.outcomes.entry(status.to_string()).or_default() += 1,
            Err(why) => {
                let key = why.split(':').next().unwrap_or("error").to_string();
                if self.examples.len() < 5 {
                    self.examples.push(format!("{op}: {why}"));
                }
                *self.errors.entry(key).or_default() += 1;
            }
        }
    }
}

type Http = reqwest::blocking::Client;

fn expect(status: reqwest::StatusCode, want: u16, body: &str) -> Result<u16, String> {
    if status.as_u16() == want {
        Ok(want)
    } else {
        Err(format!(
            "{}: {}",
            status.as_u16(),
            body.chars().take(200).collect::<String>()
        ))
    }
}

/// One request of the mix; `n` is the client's request counter.
fn one(
    c: &Http,
    base: &str,
    id: &str,
    client_no: usize,
    n: u64,
) -> (&'static str, Result<u16, String>) {
    let sb = format!("{base}/v1/sandboxes/{id}");
    let path = format!("/workspace/load-{client_no}.txt");
    let content = format!("client {client_no} request {n}\n");
    let send =
        |r: reqwest::blocking::RequestBuilder| -> Result<(reqwest::StatusCode, String), String> {
            let resp = r.send().map_err(|e| format!("transport: {e}"))?;
            let status = resp.status();
            let body = resp.text().map_err(|e| format!("transport: {e}"))?;
            Ok((status, body))
        };
    match n % 8 {
        0..=2 => {
            let word = format!("w{client_no}x{n}");
            let r = send(
                c.post(format!("{sb}/exec"))
                    .json(&json!({"argv": ["echo", word]})),
            );
            let out = r.and_then(|(s, body)| {
                expect(s, 200, &body)?;
                let v: serde_json::Value =
                    serde_json::from_str(&body).map_err(|e| format!("wrong_answer: {e}"))?;
                if v["exit_code"] != 0 || v["stdout"] != format!("{word}\n") {
                    return Err(format!("wrong_answer: {v}"));
                }
                Ok(200)
            });
            ("exec", out)
        }
        3 => {
            let r = send(
                c.put(format!("{sb}/files"))
                    .query(&[("path", &path)])
                    .body(content),
            );
            ("upload", r.and_then(|(s, body)| expect(s, 204, &body)))
        }
        4 => {
            // Reads back what this client wrote last (each client has its own file).
            let r = send(c.get(format!("{sb}/files")).query(&[("path", &path)]));
            let out = r.and_then(|(s, body)| {
                if s.as_u16() == 404 {
                    return Ok(404); // not written yet: the first round of a client
                }
                expect(s, 200, &body)?;
                if !body.starts_with(&format!("client {client_no} request ")) {
                    return Err(format!("wrong_answer: {body:?}"));
                }
                Ok(200)
            });
            ("download", out)
        }
        5 => {
            let r = send(
                c.get(format!("{sb}/files/list"))
                    .query(&[("path", "/workspace")]),
            );
            ("list_dir", r.and_then(|(s, body)| expect(s, 200, &body)))
        }
        6 => {
            let r = send(c.get(&sb));
            ("get_sandbox", r.and_then(|(s, body)| expect(s, 200, &body)))
        }
        _ => {
            let r = send(c.get(format!("{base}/v1/sandboxes")));
            (
                "list_sandboxes",
                r.and_then(|(s, body)| expect(s, 200, &body)),
            )
        }
    }
}

fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

pub fn run(args: LoadArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.sandboxes == 0 || args.seconds == 0 {
        bail!("--clients, --sandboxes and --seconds must be at least 1");
    }
    let (base, own, pid) = match &args.server {
        Some(url) => (url.trim_end_matches('/').to_string(), None, args.server_pid),
        None => {
            let (url, server) = start_server(0)?;
            let pid = server.pid();
            (url, Some(server), Some(pid))
        }
    };
    let c = client()?;
    let mut ids = Vec::new();
    let created = (|| -> anyhow::Result<()> {
        for _ in 0..args.sandboxes {
            let resp = c
                .post(format!("{base}/v1/sandboxes"))
                .json(&json!({"keepalive_seconds": args.seconds + 600}))
                .send()?;
            let status = resp.status();
            let v: serde_json::Value = resp.json()?;
            if status.as_u16() != 201 {
                bail!("creating a sandbox: {status} {v}");
            }
            ids.push(v["id"].as_str().context("sandbox without id")?.to_string());
        }
        Ok(())
    })();
    let result = created.and_then(|()| drive(&args, &base, &ids, pid));
    for id in &ids {
        let _ = c.delete(format!("{base}/v1/sandboxes/{id}")).send();
    }
    drop(own);
    result
}

fn drive(args: &LoadArgs, base: &str, ids: &[String], pid: Option<u32>) -> anyhow::Result<()> {
    let rss_before = rss_kib(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.clients)
        .map(|i| {
            let (base, id, stop) = (base.to_string(), ids[i % ids.len()].clone(), stop.clone());
            std::thread::spawn(move || -> anyhow::Result<Tally> {
                let c = client()?;
                let mut tally = Tally::default();
                let mut n = i as u64; // clients start at different points of the mix
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let (op, outcome) = one(&c, &base, &id, i, n);
                    tally.record(op, t.elapsed(), outcome);
                    n += 1;
                }
                Ok(tally)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(args.seconds));
    stop.store(true, Ordering::Relaxed);
    let mut all = Tally::default();
    for w in workers {
        let t = w
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        all.latencies.extend(t.latencies);
        for (k, v) in t.outcomes {
            *all.outcomes.entry(k).or_default() += v;
        }
        for (k, v) in t.errors {
            *all.errors.entry(k).or_default() += v;
        }
        all.examples.extend(t.examples);
    }
    let elapsed = started.elapsed();
    let rss_after = rss_kib(pid);
    // Every sandbox still answers after the load.
    let c = client()?;
    let mut unhealthy = 0;
    for id in ids {
        let ok = c
            .post(format!("{base}/v1/sandboxes/{id}/exec"))
            .json(&json!({"argv": ["true"]}))
            .send()
            .is_ok_and(|r| r.status().is_success());
        unhealthy += u64::from(!ok);
    }
    all.latencies.sort();
    let requests = all.latencies.len() as u64;
    let errors: u64 = all.errors.values().sum();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let errors_by = &all.errors;
    let report = json!({
        "clients": args.clients,
        "sandboxes": ids.len(),
        "seconds": elapsed.as_secs_f64(),
        "requests": requests,
        "requests_per_second": requests as f64 / elapsed.as_secs_f64(),
        "errors": errors,
        "errors_by_status": errors_by,
        "outcomes": all.outcomes,
        "error_examples": all.examples,
        "latency_ms": {
            "p50": ms(percentile(&all.latencies, 0.5)),
            "p90": ms(percentile(&all.latencies, 0.9)),
            "p99": ms(percentile(&all.latencies, 0.99)),
            "max": ms(all.latencies.last().copied().unwrap_or_default()),
        },
        "server_rss_kib": {"before": rss_before, "after": rss_after},
        "sandboxes_not_answering_after": unhealthy,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "load: {} clients on {} sandboxes for {:.1} s (mix: 3/8 exec, 1/8 each upload, download, list dir, get, list)",
            args.clients,
            ids.len(),
            elapsed.as_secs_f64()
        );
        println!(
            "requests {requests} ({:.0}/s), errors {errors} {}",
            requests as f64 / elapsed.as_secs_f64(),
            serde_json::to_string(errors_by)?
        );
        println!(
            "outcomes by status: {}",
            serde_json::to_string(&all.outcomes)?
        );
        println!(
            "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            ms(percentile(&all.latencies, 0.5)),
            ms(percentile(&all.latencies, 0.9)),
            ms(percentile(&all.latencies, 0.99)),
            ms(all.latencies.last().copied().unwrap_or_default())
        );
        let mib =
            |k: Option<u64>| k.map_or("?".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        println!(
            "server RSS: before {}, after {}",
            mib(rss_before),
            mib(rss_after)
        );
        println!("sandboxes not answering after the load: {unhealthy}");
        for e in &all.examples {
            println!("  e.g. {e}");
        }
    }
    if errors > 0 || unhealthy > 0 {
        bail!("{errors} failed requests, {unhealthy} sandboxes not answering after the load");
    }
    Ok(())
}
