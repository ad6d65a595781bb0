//! `sandpit bench`: measures sandpit against the floor (a bare `sh -c true` spawn) and the
//! alternatives installed on this machine (`bwrap`), printing medians, p99s and ratios, so
//! the figures mean something on a noisy machine. Starts its own server unless `--server`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Use a running server instead of starting one (e.g. http://127.0.0.1:8787).
    #[arg(long)]
    server: Option<String>,
    /// Repetitions of each latency measurement.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Seconds of the concurrent-exec throughput run.
    #[arg(long, default_value_t = 5)]
    throughput_seconds: u64,
    /// Concurrent clients in the throughput run.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Size in MiB of the file uploaded and downloaded.
    #[arg(long, default_value_t = 256)]
    file_mb: usize,
}

struct Stats {
    name: String,
    median: Duration,
    p99: Duration,
}

fn stats(name: &str, mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        name: name.to_string(),
        median: at(0.5),
        p99: at(0.99),
    }
}

fn time_n(n: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Vec<Duration>> {
    f()?; // warm-up
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f()?;
            Ok(t.elapsed())
        })
        .collect()
}

pub(crate) struct OwnServer {
    child: Child,
    _dir: tempfile::TempDir,
}

impl OwnServer {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_server() -> anyhow::Result<(String, OwnServer)> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let child = Command::new(std::env::current_exe()?)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .env_remove("SANDPIT_AUTH_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting sandpit serve")?;
    let server = OwnServer { child, _dir: dir };
    let client = reqwest::blocking::Client::new();
    for _ in 0..300 {
        if client
            .get(format!("{url}/health"))
            .send()
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok((url, server));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("the server did not become healthy")
}

pub(crate) fn client() -> anyhow::Result<reqwest::blocking::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(token) = std::env::var("SANDPIT_AUTH_TOKEN") {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse()?,
        );
    }
    Ok(reqwest::blocking::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(60))
        .build()?)
}

fn post(
    c: &reqwest::blocking::Client,
    url: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let resp = c.post(url).json(&body).send()?;
    let status = resp.status();
    let v: serde_json::Value = resp.json()?;
    if !status.is_success() {
        bail!("{url}: {status} {v}");
    }
    Ok(v)
}

fn exec_true(c: &reqwest::blocking::Client, base: &str, id: &str) -> anyhow::Result<()> {
    let v = post(
        c,
        &format!("{base}/v1/sandboxes/{id}/exec"),
        json!({"argv": ["true"]}),
    )?;
    if v["exit_code"] != 0 {
        bail!("exec failed: {v}");
    }
    Ok(())
}

fn bwrap_args() -> Vec<String> {
    let mut args: Vec<String> = [
        "--unshare-all",
        "--die-with-parent",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for dir in sandpit_runtime::jail::BASE_DIRS {
        match std::fs::symlink_metadata(dir) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(dir) {
                    args.extend([
                        "--symlink".into(),
                        target.to_string_lossy().into_owned(),
                        dir.to_string(),
                    ]);
                }
            }
            Ok(m) if m.is_dir() => {
                args.extend(["--ro-bind".into(), dir.to_string(), dir.to_string()])
            }
            _ => {}
        }
    }
    args.push("true".into());
    args
}

fn spawn_ok(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status()?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let n = args.iterations.max(10);
    let (base, server) = match &args.server {
        Some(url) => (url.trim_end_matches('/').to_string(), None),
        None => {
            let (url, server) = start_server()?;
            (url, Some(server))
        }
    };
    let c = client()?;
    let mut rows = Vec::new();

    let bare = stats(
        "bare spawn: sh -c true",
        time_n(n, || spawn_ok(Command::new("sh").args(["-c", "true"])))?,
    );
    let floor = bare.median;
    rows.push(bare);
    let has_bwrap = Command::new("bwrap")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if has_bwrap {
        let bw = bwrap_args();
        rows.push(stats(
            "bwrap spawn, all namespaces",
            time_n(n, || spawn_ok(Command::new("bwrap").args(&bw)))?,
        ));
    }

    let id = format!("bench-{}", std::process::id());
    post(&c, &format!("{base}/v1/sandboxes"), json!({"id": id}))?;
    rows.push(stats(
        "sandpit exec round trip (true)",
        time_n(n, || exec_true(&c, &base, &id))?,
    ));
    let code_url = format!("{base}/v1/sandboxes/{id}/code");
    rows.push(stats(
        "sandpit code run (x = 1, Python)",
        time_n(n, || {
            let v = post(&c, &code_url, json!({"code": "x = 1"}))?;
            if !v["error"].is_null() {
                bail!("code run failed: {v}");
            }
            Ok(())
        })?,
    ));

    let mut k = 0;
    let creates = time_n(n.min(100), || {
        k += 1;
        let sid = format!("{id}-{k}");
        post(&c, &format!("{base}/v1/sandboxes"), json!({"id": sid}))?;
        exec_true(&c, &base, &sid)?;
        Ok(())
    })?;
    rows.push(stats("sandpit create + first exec", creates));

    // Throughput: concurrent clients running `true` for a fixed time.
    let deadline = Instant::now() + Duration::from_secs(args.throughput_seconds);
    let handles: Vec<_> = (0..args.clients)
        .map(|_| {
            let (c, base, id) = (c.clone(), base.clone(), id.clone());
            std::thread::spawn(move || {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    if exec_true(&c, &base, &id).is_ok() {
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    let per_second = total as f64 / args.throughput_seconds as f64;
    let files = file_throughput(&c, &base, &id, args.file_mb)?;

    for i in 0..=k {
        let sid = if i == 0 {
            id.clone()
        } else {
            format!("{id}-{i}")
        };
        let _ = c.delete(format!("{base}/v1/sandboxes/{sid}")).send();
    }

    println!(
        "sandpit bench: {n} iterations each, {} cores",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    println!(
        "{:<34} {:>10} {:>10} {:>12}",
        "measure", "median", "p99", "vs bare"
    );
    for r in &rows {
        println!(
            "{:<34} {:>8.2}ms {:>8.2}ms {:>11.1}x",
            r.name,
            r.median.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.median.as_secs_f64() / floor.as_secs_f64()
        );
    }
    if !has_bwrap {
        println!("(bwrap not installed: `apt-get install bubblewrap` to compare)");
    }
    println!(
        "throughput: {per_second:.0} exec/s with {} concurrent clients over {} s",
        args.clients, args.throughput_seconds
    );
    println!(
        "files: {} MiB upload {:.0} MB/s, download {:.0} MB/s",
        args.file_mb, files.0, files.1
    );
    if let Some(server) = &server {
        if let Some(kib) = peak_rss_kib(server.child.id()) {
            println!("server peak RSS over the whole run: {} MiB", kib / 1024);
        }
    }
    Ok(())
}

/// Uploads and downloads a file of `mb` MiB through the API; MB/s each way.
fn file_throughput(
    c: &reqwest::blocking::Client,
    base: &str,
    id: &str,
    mb: usize,
) -> anyhow::Result<(f64, f64)> {
    let size = mb << 20;
    let body: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    let url = format!("{base}/v1/sandboxes/{id}/files?path=/workspace/bench.bin");
    let t = Instant::now();
    let resp = c.put(&url).body(body).send()?;
    if !resp.status().is_success() {
        bail!("upload failed: {}", resp.status());
    }
    let up = size as f64 / t.elapsed().as_secs_f64() / 1e6;
    let t = Instant::now();
    let mut resp = c.get(&url).send()?;
    let got = std::io::copy(&mut resp, &mut std::io::sink())?;
    if got as usize != size {
        bail!("download returned {got} bytes, not {size}");
    }
    let down = size as f64 / t.elapsed().as_secs_f64() / 1e6;
    Ok((up, down))
}

/// The peak resident memory of a process (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
