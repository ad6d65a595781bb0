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
    /// Warm pool size of the second server that measures create from the pool (0: skip).
    #[arg(long, default_value_t = 2)]
    pool_size: usize,
    /// Write every latency sample as CSV (`measure,ms`) here, for scripts/bench_plot.py.
    #[arg(long)]
    csv: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Option<BenchCommand>,
}

#[derive(clap::Subcommand, Debug)]
enum BenchCommand {
    /// Creates COUNT idle sandboxes at once: memory per sandbox, time to create, all answer.
    Density(DensityArgs),
    /// The warm-pool create alone, taken apart: the create call, the first and the second
    /// exec, and the server's own create time (for profiling the hand-over).
    Warm(WarmArgs),
}

#[derive(clap::Args, Debug)]
struct WarmArgs {
    #[arg(long, default_value_t = 100)]
    count: usize,
    #[arg(long, default_value_t = 2)]
    pool_size: usize,
}

#[derive(clap::Args, Debug)]
struct DensityArgs {
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Concurrent creating clients.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Memory limit of each sandbox, MiB (a cgroup limit, not a reservation).
    #[arg(long, default_value_t = 64)]
    memory_mb: u64,
}

struct Stats {
    name: String,
    median: Duration,
    p99: Duration,
    /// In the order measured.
    samples: Vec<Duration>,
}

fn stats(name: &str, samples: Vec<Duration>) -> Stats {
    let mut sorted = samples.clone();
    sorted.sort();
    let at = |q: f64| {
        sorted
            .get(((sorted.len().max(1) as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    Stats {
        name: name.to_string(),
        median: at(0.5),
        p99: at(0.99),
        samples,
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
    url: String,
    _dir: tempfile::TempDir,
}

impl OwnServer {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for OwnServer {
    /// Deletes every sandbox left (they would outlive the server), then SIGTERM, so the
    /// server deletes its pooled sandboxes; SIGKILL after 20 s.
    fn drop(&mut self) {
        let c = reqwest::blocking::Client::new();
        let listed = c
            .get(format!("{}/v1/sandboxes", self.url))
            .send()
            .and_then(|r| r.json::<serde_json::Value>());
        if let Ok(list) = listed {
            let ids = list["sandboxes"].as_array().cloned().unwrap_or_default();
            for id in ids.iter().filter_map(|s| s["id"].as_str()) {
                let _ = c.delete(format!("{}/v1/sandboxes/{id}", self.url)).send();
            }
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..200 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_server(pool_size: usize) -> anyhow::Result<(String, OwnServer)> {
    let dir = tempfile::tempdir()?;
    // Sandbox uids must be able to traverse the data dir.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let child = Command::new(std::env::current_exe()?)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--pool-size",
            &pool_size.to_string(),
            "--data-dir",
        ])
        .arg(dir.path())
        .env_remove("SANDPIT_AUTH_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting sandpit serve")?;
    let server = OwnServer {
        child,
        url: url.clone(),
        _dir: dir,
    };
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

/// `runsc do` works here (gVisor installed and usable as this user).
fn has_runsc() -> bool {
    Command::new("runsc")
        .args(["--network=none", "do", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Docker engine answers and has the image `bench.sh` imports.
fn docker_image() -> Option<String> {
    let image = std::env::var("SANDPIT_BENCH_DOCKER_IMAGE").unwrap_or("sandpit-bench".into());
    Command::new("docker")
        .args(["image", "inspect", &image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        .then_some(image)
}

/// The number of ready pooled sandboxes the server reports.
fn pool_ready(c: &reqwest::blocking::Client, base: &str) -> Option<usize> {
    let text = c.get(format!("{base}/metrics")).send().ok()?.text().ok()?;
    metric(&text, "sandpit_pool_ready").map(|v| v as usize)
}

/// The value of the sample `name` (labels included) in a Prometheus text page.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn wait_pool(c: &reqwest::blocking::Client, base: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while pool_ready(c, base).unwrap_or(n) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `count` creates, each followed by one exec; with `refill`, each waits (untimed) until the
/// pool has `refill` ready sandboxes again. Returns the samples and the ids made.
fn creates(
    c: &reqwest::blocking::Client,
    base: &str,
    prefix: &str,
    count: usize,
    refill: Option<usize>,
) -> anyhow::Result<(Vec<Duration>, Vec<String>)> {
    let mut samples = Vec::new();
    let mut ids = Vec::new();
    for k in 0..=count {
        if let Some(n) = refill {
            wait_pool(c, base, n);
        }
        let sid = format!("{prefix}-{k}");
        let t = Instant::now();
        post(c, &format!("{base}/v1/sandboxes"), json!({"id": sid}))?;
        exec_true(c, base, &sid)?;
        let took = t.elapsed();
        ids.push(sid);
        if k > 0 {
            samples.push(took); // the first is a warm-up
        }
    }
    Ok((samples, ids))
}

/// `sandpit bench warm`: each create waits (untimed) for a full pool, then times the create
/// call, the first exec and a second one; the server's mean create time comes from its
/// `sandpit_create_duration_seconds` histogram.
fn warm(args: &WarmArgs) -> anyhow::Result<()> {
    let pool = args.pool_size.max(1);
    let (base, server) = start_server(pool)?;
    let c = client()?;
    let (mut create, mut first, mut second, mut both) = (vec![], vec![], vec![], vec![]);
    for k in 0..=args.count {
        wait_pool(&c, &base, pool);
        let sid = format!("warm-{k}");
        let t = Instant::now();
        post(&c, &format!("{base}/v1/sandboxes"), json!({"id": sid}))?;
        let created = t.elapsed();
        exec_true(&c, &base, &sid)?;
        let first_done = t.elapsed();
        let t2 = Instant::now();
        exec_true(&c, &base, &sid)?;
        if k > 0 {
            create.push(created);
            first.push(first_done - created);
            second.push(t2.elapsed());
            both.push(first_done);
        }
    }
    // Exec latency on a neighbour while the pool refills (from 45 to 150 ms after a create:
    // the refill starts once creates pause for 50 ms), against the same with a full pool.
    let neighbour = "warm-neighbour";
    post(
        &c,
        &format!("{base}/v1/sandboxes"),
        json!({"id": neighbour}),
    )?;
    wait_pool(&c, &base, pool);
    let full = time_n(200, || exec_true(&c, &base, neighbour))?;
    let mut refilling = Vec::new();
    for k in 0..20 {
        wait_pool(&c, &base, pool);
        let sid = format!("warm-r-{k}");
        post(&c, &format!("{base}/v1/sandboxes"), json!({"id": sid}))?;
        let created = Instant::now();
        while created.elapsed() < Duration::from_millis(150) {
            let t = Instant::now();
            exec_true(&c, &base, neighbour)?;
            if created.elapsed() >= Duration::from_millis(45) {
                refilling.push(t.elapsed());
            }
        }
    }
    let metrics = c.get(format!("{base}/metrics")).send()?.text()?;
    let server_ms = match (
        metric(
            &metrics,
            "sandpit_create_duration_seconds_sum{source=\"pool\"}",
        ),
        metric(
            &metrics,
            "sandpit_create_duration_seconds_count{source=\"pool\"}",
        ),
    ) {
        (Some(sum), Some(n)) if n > 0.0 => Some(sum / n * 1e3),
        _ => None,
    };
    drop(server);
    println!(
        "sandpit bench warm: {} creates from a pool of {pool}",
        args.count
    );
    println!("{:<34} {:>10} {:>10}", "measure", "median", "p99");
    for s in [
        stats("create call", create),
        stats("first exec", first),
        stats("second exec", second),
        stats("create + first exec", both),
        stats("neighbour exec, pool full", full),
        stats("neighbour exec, pool refilling", refilling),
    ] {
        println!(
            "{:<34} {:>8.2}ms {:>8.2}ms",
            s.name,
            s.median.as_secs_f64() * 1e3,
            s.p99.as_secs_f64() * 1e3
        );
    }
    if let Some(ms) = server_ms {
        println!("server's own create time (mean): {ms:.2} ms");
    }
    Ok(())
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match &args.command {
        Some(BenchCommand::Density(d)) => return density(d),
        Some(BenchCommand::Warm(w)) => return warm(w),
        None => {}
    }
    let n = args.iterations.max(10);
    let (base, server) = match &args.server {
        Some(url) => (url.trim_end_matches('/').to_string(), None),
        None => {
            let (url, server) = start_server(0)?;
            (url, Some(server))
        }
    };
    let c = client()?;
    let mut rows: Vec<Stats> = Vec::new();
    let mut notes = Vec::new();

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
    let mut bwrap_median = None;
    if has_bwrap {
        let bw = bwrap_args();
        let row = stats(
            "bwrap spawn, all namespaces",
            time_n(n, || spawn_ok(Command::new("bwrap").args(&bw)))?,
        );
        bwrap_median = Some(row.median);
        rows.push(row);
    } else {
        notes.push("bwrap not installed: `apt-get install bubblewrap` to compare".to_string());
    }
    if has_runsc() {
        rows.push(stats(
            "runsc do true (gVisor)",
            time_n(n.min(50), || {
                spawn_ok(Command::new("runsc").args(["--network=none", "do", "true"]))
            })?,
        ));
    } else {
        notes.push("runsc (gVisor) not usable: `apt-get install runsc`, as root".to_string());
    }
    let docker = docker_image();
    if let Some(image) = &docker {
        rows.push(stats(
            "docker run --rm true",
            time_n(n.min(30), || {
                spawn_ok(Command::new("docker").args([
                    "run",
                    "--rm",
                    "--network",
                    "none",
                    image,
                    "true",
                ]))
            })?,
        ));
        let out = Command::new("docker")
            .args(["run", "-d", "--network", "none", image, "sleep", "infinity"])
            .output()?;
        let ctr = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !ctr.is_empty() {
            let row = time_n(n.min(100), || {
                spawn_ok(Command::new("docker").args(["exec", &ctr, "true"]))
            });
            let _ = Command::new("docker")
                .args(["rm", "-f", &ctr])
                .stdout(Stdio::null())
                .status();
            rows.push(stats("docker exec true", row?));
        }
    } else {
        notes.push(
            "docker not compared: no engine answering, or no `sandpit-bench` image (scripts/bench.sh makes one)"
                .to_string(),
        );
    }

    let id = format!("bench-{}", std::process::id());
    post(&c, &format!("{base}/v1/sandboxes"), json!({"id": id}))?;
    let exec_row = stats(
        "sandpit exec round trip (true)",
        time_n(n, || exec_true(&c, &base, &id))?,
    );
    let exec_median = exec_row.median;
    rows.push(exec_row);
    let code_url = format!("{base}/v1/sandboxes/{id}/code");
    let code_row = stats(
        "sandpit code run (x = 1, Python)",
        time_n(n, || {
            let v = post(&c, &code_url, json!({"code": "x = 1"}))?;
            if !v["error"].is_null() {
                bail!("code run failed: {v}");
            }
            Ok(())
        })?,
    );
    let code_median = code_row.median;
    rows.push(code_row);

    let mut made = vec![id.clone()];
    let label = if args.server.is_some() {
        "sandpit create + first exec"
    } else {
        "sandpit create + first exec (cold)"
    };
    let (samples, ids) = creates(&c, &base, &format!("{id}-c"), n.min(100), None)?;
    made.extend(ids);
    let cold = stats(label, samples);
    let cold_median = cold.median;
    rows.push(cold);

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
    let peak_rss = server
        .as_ref()
        .and_then(|s| peak_rss_kib(s.child.id()))
        .map(|kib| kib / 1024);
    for sid in &made {
        let _ = c.delete(format!("{base}/v1/sandboxes/{sid}")).send();
    }
    drop(server);

    // The warm pool: a server of its own, so the measurements above ran without refills.
    let mut warm_median = None;
    if args.server.is_none() && args.pool_size > 0 {
        let (base, server) = start_server(args.pool_size)?;
        wait_pool(&c, &base, args.pool_size);
        let (samples, ids) = creates(
            &c,
            &base,
            &format!("{id}-w"),
            n.min(100),
            Some(args.pool_size),
        )?;
        let warm = stats("sandpit create + first exec (warm pool)", samples);
        warm_median = Some(warm.median);
        rows.push(warm);
        for sid in &ids {
            let _ = c.delete(format!("{base}/v1/sandboxes/{sid}")).send();
        }
        drop(server);
    }

    println!(
        "sandpit bench: {n} iterations each (fewer for runsc and docker), {} cores",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    println!(
        "{:<42} {:>10} {:>10} {:>10}",
        "measure", "median", "p99", "vs bare"
    );
    for r in &rows {
        println!(
            "{:<42} {:>8.2}ms {:>8.2}ms {:>9.1}x",
            r.name,
            r.median.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.median.as_secs_f64() / floor.as_secs_f64()
        );
    }
    for note in &notes {
        println!("({note})");
    }
    println!(
        "throughput: {per_second:.0} exec/s with {} concurrent clients over {} s",
        args.clients, args.throughput_seconds
    );
    println!(
        "files: {} MiB upload {:.0} MB/s, download {:.0} MB/s",
        args.file_mb, files.0, files.1
    );
    if let Some(mib) = peak_rss {
        println!("server peak RSS over the whole run: {mib} MiB");
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!("targets (ratios from this run):");
    println!(
        "  exec round trip / bare spawn: {:.2}x (target <= 3x)",
        ratio(exec_median, floor)
    );
    if let Some(bw) = bwrap_median {
        println!(
            "  create + first exec (cold) / bwrap spawn: {:.2}x (target <= 2x)",
            ratio(cold_median, bw)
        );
    }
    if let Some(w) = warm_median {
        println!(
            "  create + first exec (warm pool): {:.2} ms (target < 2 ms)",
            w.as_secs_f64() * 1e3
        );
    }
    println!("  throughput: {per_second:.0} exec/s (target >= 500)");
    println!(
        "  code run / exec round trip: {:.2}x (target <= 3x)",
        ratio(code_median, exec_median)
    );
    println!(
        "  files: {:.0} / {:.0} MB/s (target >= 500 each way)",
        files.0, files.1
    );
    if let Some(path) = &args.csv {
        let mut out = String::from("measure,ms\n");
        for r in &rows {
            for d in &r.samples {
                out.push_str(&format!("\"{}\",{:.4}\n", r.name, d.as_secs_f64() * 1e3));
            }
        }
        std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))?;
        println!("samples written to {}", path.display());
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

/// A field of /proc/meminfo, in KiB.
fn meminfo_kib(field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/meminfo"))
}

/// Runs `f` on every item from `threads` threads; the number of items it failed on, with
/// the first error.
fn in_parallel<T: Send + Sync>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> anyhow::Result<()> + Sync,
) -> (usize, Option<String>) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicUsize::new(0);
    let first = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(item) = items.get(i) else { break };
                if let Err(e) = f(item) {
                    failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if let Ok(mut first) = first.lock() {
                        first.get_or_insert(format!("{e:#}"));
                    }
                }
            });
        }
    });
    let first = first.into_inner().ok().flatten();
    (failed.into_inner(), first)
}

/// `sandpit bench density`: COUNT idle sandboxes at once.
fn density(args: &DensityArgs) -> anyhow::Result<()> {
    let (base, server) = start_server(0)?;
    let c = client()?;
    let ids: Vec<String> = (0..args.count)
        .map(|i| format!("density-{}-{i}", std::process::id()))
        .collect();
    // Settle, then the baseline: the server is up, nothing else of ours runs.
    std::thread::sleep(Duration::from_secs(2));
    let total = meminfo_kib("MemTotal")?;
    let avail_before = meminfo_kib("MemAvailable")?;
    let t = Instant::now();
    let (failed, first) = in_parallel(&ids, args.concurrency, |sid| {
        post(
            &c,
            &format!("{base}/v1/sandboxes"),
            json!({"id": sid, "keepalive_seconds": 0, "limits": {"memory_mb": args.memory_mb}}),
        )
        .map(drop)
    });
    let create_s = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(3));
    let avail_after = meminfo_kib("MemAvailable")?;
    let t = Instant::now();
    let (exec_failed, exec_first) =
        in_parallel(&ids, args.concurrency, |sid| exec_true(&c, &base, sid));
    let exec_s = t.elapsed().as_secs_f64();
    let created = args.count - failed;
    let growth = avail_before.saturating_sub(avail_after);
    let rss = peak_rss_kib(server.child.id()).map_or(0, |k| k / 1024);
    println!(
        "sandpit bench density: {} sandboxes, {} concurrent clients",
        args.count, args.concurrency
    );
    println!(
        "  created: {created}/{} in {create_s:.1} s ({:.0}/s)",
        args.count,
        created as f64 / create_s
    );
    if let Some(e) = first {
        println!("  first create failure: {e}");
    }
    println!(
        "  machine memory in use grew by {} MiB (MemAvailable {} -> {} MiB of {} MiB): {:.2} MiB per sandbox",
        growth / 1024,
        avail_before / 1024,
        avail_after / 1024,
        total / 1024,
        growth as f64 / 1024.0 / created.max(1) as f64
    );
    println!(
        "  exec `true` in every one: {}/{created} answered in {exec_s:.1} s",
        created - exec_failed.min(created)
    );
    if let Some(e) = exec_first {
        println!("  first exec failure: {e}");
    }
    println!("  server peak RSS: {rss} MiB");
    let t = Instant::now();
    let (del_failed, _) = in_parallel(&ids, args.concurrency, |sid| {
        c.delete(format!("{base}/v1/sandboxes/{sid}")).send()?;
        Ok(())
    });
    println!(
        "  deleted all in {:.1} s ({del_failed} failed)",
        t.elapsed().as_secs_f64()
    );
    drop(server);
    Ok(())
}
