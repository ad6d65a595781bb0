//! The `sandpit` binary: one executable for the server (`serve`), the in-sandbox agent
//! (`agent`), the namespace set-up step (`jail`, internal) and the benchmark (`bench`).
//! The client subcommands (`create`, `exec`, `cp`, ...) live in `cli.rs`.

mod bench;
mod bench_load;
mod cli;
mod config;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sandpit",
    version,
    about = "Isolated Linux sandboxes over HTTP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server.
    Serve(config::ServeArgs),
    /// Measure create and exec latency against a bare process spawn.
    Bench(bench::BenchArgs),
    /// A bounded load test: many clients on many sandboxes for a fixed time, every answer checked.
    BenchLoad(bench_load::LoadArgs),
    /// Read an API key on stdin and print its hex SHA-256, for `key_sha256` in `[[tenants]]`.
    HashKey,
    /// Run the agent inside a sandbox (started by `sandpit jail`).
    #[command(hide = true)]
    Agent,
    /// Set up a sandbox's namespaces and exec its agent (started by the server).
    #[command(hide = true)]
    Jail {
        /// Remove the sandbox's files from inside its user namespace instead of starting it.
        #[arg(long)]
        remove: bool,
    },
    /// Client subcommands: create, ls, info, exec, shell, cp, logs, snapshot, rm, ...
    #[command(flatten)]
    Client(cli::Command),
}

fn main() {
    // The jail and the agent start on every sandbox start: they skip building the whole
    // command line parser (measured in docs/BENCHMARKS.md, "Process start-up").
    let mut args = std::env::args_os().skip(1);
    let (first, second, more) = (args.next(), args.next(), args.next().is_some());
    match (
        first.as_ref().and_then(|a| a.to_str()),
        second.as_ref().and_then(|a| a.to_str()),
        more,
    ) {
        (Some("agent"), None, false) => std::process::exit(sandpit_agent::main()),
        (Some("jail"), None, false) => std::process::exit(sandpit_runtime::jail::main(false)),
        (Some("jail"), Some("--remove"), false) => {
            std::process::exit(sandpit_runtime::jail::main(true))
        }
        _ => {}
    }
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Agent => sandpit_agent::main(),
        Command::Jail { remove } => sandpit_runtime::jail::main(remove),
        Command::Serve(args) => {
            install_tls_provider();
            report(serve(args))
        }
        Command::Bench(args) => report(bench::run(args)),
        Command::BenchLoad(args) => report(bench_load::run(args)),
        Command::Client(cmd) => {
            install_tls_provider();
            cli::main(cmd)
        }
        Command::HashKey => report(hash_key()),
    };
    std::process::exit(code);
}

/// Outgoing https (S3 snapshot storage, webhooks, the CLI talking to a remote server) goes
/// through reqwest on rustls, built without a crypto provider of its own: install ring's as
/// the process default, before any client is made (a second install is a harmless no-op).
/// Applies `--cgroup-favordynmods`, or says once what it would save.
fn cgroup_tuning(favordynmods: bool) {
    use sandpit_runtime::tuning;
    if tuning::favordynmods_on() {
        tracing::info!("cgroups: favordynmods is set, joining a cgroup is cheap");
    } else if favordynmods {
        match tuning::enable_favordynmods() {
            Ok(mount) => tracing::info!(mount = %mount.display(), "cgroups: favordynmods set"),
            Err(e) => tracing::warn!("cgroups: could not set favordynmods: {e}"),
        }
    } else {
        tracing::info!(
            "cgroups: joining one waits for an RCU grace period (milliseconds per cold create); \
             --cgroup-favordynmods (root, Linux 6.0+) makes it cheap for the whole host"
        );
    }
}

fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn report(result: anyhow::Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("sandpit: {e:#}");
            1
        }
    }
}

/// `sandpit hash-key`: the key is the first line of stdin (a trailing newline is not part of it).
fn hash_key() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the key from stdin")?;
    let key = line.trim_end_matches(['\n', '\r']);
    if key.is_empty() {
        bail!("no key on stdin: echo -n \"$KEY\" | sandpit hash-key");
    }
    println!("{}", sandpit_core::tenant::hash_key(key));
    Ok(())
}

fn serve(args: config::ServeArgs) -> anyhow::Result<()> {
    let mut cfg = config::Config::load(args)?;
    init_logging(&cfg.log_format)?;
    let addr: SocketAddr = cfg
        .listen
        .parse()
        .with_context(|| format!("--listen '{}'", cfg.listen))?;
    if !cfg.keys.enabled() && !addr.ip().is_loopback() && !cfg.insecure {
        bail!(
            "refusing to listen on {addr} without a token: set SANDPIT_AUTH_TOKEN, or pass --insecure to serve an open API on the network"
        );
    }
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let data_dir = cfg.data_dir.canonicalize()?;
    let binary = std::env::current_exe().context("locating the sandpit binary")?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(&[0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])?
            .install_recorder()
            .context("installing the metrics recorder")?;
        let runtime = Arc::new(sandpit_runtime::NativeRuntime::new(sandpit_runtime::RuntimeOptions {
            data_dir: data_dir.clone(),
            binary,
            uid_base: cfg.uid_base,
        }));
        cgroup_tuning(cfg.cgroup_favordynmods);
        let store = Arc::new(sandpit_core::store::SqliteStore::open(&data_dir.join("sandpit.db"))?);
        let core = cfg.core(data_dir.clone());
        if let (Some(mb), Some(why)) = (core.default_limits.disk_mb, sandpit_runtime::Runtime::disk_unsupported(runtime.as_ref())) {
            tracing::warn!("defaults.disk_mb = {mb} is not applied: {why}");
        }
        let native = runtime.clone();
        let manager = sandpit_core::SandboxManager::new(runtime, store, core);
        let storage = sandpit_core::snapshot::ObjectStorage::open(&cfg.storage, &data_dir)
            .context("snapshot storage")?;
        tracing::info!(storage = %storage.description, "snapshots");
        manager.set_storage(storage)?;
        manager.recover().await?;
        let reaper = manager.spawn_reaper();
        manager.start_pool();
        let tenants = cfg.keys.enabled();
        let state = sandpit_api::AppState {
            manager: manager.clone(),
            token: cfg.token.clone().map(Arc::from),
            keys: Arc::new(std::mem::take(&mut cfg.keys)),
            metrics,
            max_upload_bytes: cfg.max_upload_bytes,
            root_dialect: cfg.root_dialect.as_deref().map(Arc::from),
            ports_domain: cfg.ports_domain.as_deref().map(Arc::from),
        };
        let e2b = match cfg.e2b_listen.as_deref() {
            Some(a) => Some(serve_e2b(a, state.clone(), tenants || cfg.insecure).await?),
            None => None,
        };
        let app = sandpit_api::router(state);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        // The test harness (tests/common) waits for this message: keep its text.
        tracing::info!(%addr, data_dir = %data_dir.display(), auth = cfg.token.is_some() || tenants, root_dialect = cfg.root_dialect.as_deref(), "sandpit serving");
        // The peer address feeds X-Forwarded-For of the port proxy.
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        reaper.abort();
        manager.close_pool().await;
        if let Some(e2b) = e2b {
            e2b.abort();
        }
        manager.flush();
        native.remove_instance_cgroups();
        tracing::info!("stopped; sandboxes keep running and are re-attached at the next start");
        Ok::<_, anyhow::Error>(())
    })
}

/// `--e2b-listen`: the e2b dialect alone, at the root of its own address.
async fn serve_e2b(
    addr: &str,
    state: sandpit_api::AppState,
    may_be_public: bool,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("--e2b-listen '{addr}'"))?;
    if !may_be_public && !addr.ip().is_loopback() {
        bail!("refusing --e2b-listen on {addr} without a token: set SANDPIT_AUTH_TOKEN, or pass --insecure");
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr} (--e2b-listen)"))?;
    tracing::info!(%addr, "serving the e2b dialect");
    let app = sandpit_api::e2b_router(state);
    Ok(tokio::spawn(async move {
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown_signal())
        .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the e2b listener failed");
        }
    }))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

fn init_logging(format: &str) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SANDPIT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => bail!("--log-format must be 'text' or 'json', not '{other}'"),
    }
    Ok(())
}
