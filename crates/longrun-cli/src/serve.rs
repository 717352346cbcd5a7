//! `longrun serve`: flags (each with an env variable) over an optional TOML config file over
//! the protocol's defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytesize::ByteSize;
use clap::Args;
use longrun_proto::ObjectName;
use longrun_server::exec::ExecSpec;
use longrun_server::{Config, Server};
use serde::Deserialize;

#[derive(Args, Debug)]
#[command(
    after_help = "Durations are written like 500ms, 15s, 10m, 1h. Sizes like 1048576, 512KiB, 1MiB.\n\
Logs go to stderr; set LONGRUN_LOG (e.g. debug, longrun_server=trace) to change the level."
)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "LONGRUN_LISTEN")]
    listen: Option<SocketAddr>,
    /// Largest submit body accepted [default: 1MiB].
    #[arg(long, env = "LONGRUN_BODY_LIMIT")]
    body_limit: Option<ByteSize>,
    /// How long ended runs stay readable [default: 1h].
    #[arg(long, env = "LONGRUN_RETENTION", value_parser = humantime::parse_duration)]
    retention: Option<Duration>,
    /// Most ended runs kept [default: 10000].
    #[arg(long, env = "LONGRUN_MAX_RETAINED")]
    max_retained: Option<usize>,
    /// Most runs active at once [default: 10000].
    #[arg(long, env = "LONGRUN_MAX_ACTIVE_RUNS")]
    max_active_runs: Option<usize>,
    /// Most events one run may hold [default: 1000000].
    #[arg(long, env = "LONGRUN_MAX_EVENTS_PER_RUN")]
    max_events_per_run: Option<u64>,
    /// Idle time before an SSE keep-alive comment [default: 15s].
    #[arg(long, env = "LONGRUN_KEEP_ALIVE", value_parser = humantime::parse_duration)]
    keep_alive: Option<Duration>,
    /// Reconnection hint sent to SSE clients [default: 1s].
    #[arg(long, env = "LONGRUN_RETRY", value_parser = humantime::parse_duration)]
    retry: Option<Duration>,
    /// How long a canceled run may take to stop; also the shutdown grace [default: 5s].
    #[arg(long, env = "LONGRUN_GRACE", value_parser = humantime::parse_duration)]
    grace: Option<Duration>,
    /// Let browser pages from this origin call the server (CORS), e.g. http://localhost:3000;
    /// `*` allows any origin (repeatable; env: comma-separated).
    #[arg(
        long = "cors-origin",
        value_name = "ORIGIN",
        env = "LONGRUN_CORS_ORIGIN",
        value_delimiter = ','
    )]
    cors_origin: Vec<String>,
    /// TOML config file; flags and env variables override it.
    #[arg(long, env = "LONGRUN_CONFIG")]
    config: Option<PathBuf>,
    /// Do not register the demo objects (echo, count, sleep, fail, emit, ephemeral).
    #[arg(long, env = "LONGRUN_NO_DEMO")]
    no_demo: bool,
    /// Turn a program into an object: NAME='program arg…' (no shell; repeatable).
    #[arg(long = "exec", value_name = "NAME=COMMAND")]
    exec: Vec<String>,
}

/// The config file. Every key is optional.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    body_limit: Option<ByteSize>,
    #[serde(default, with = "humantime_serde")]
    retention: Option<Duration>,
    max_retained: Option<usize>,
    max_active_runs: Option<usize>,
    max_events_per_run: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    keep_alive: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    retry: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    grace: Option<Duration>,
    demo: Option<bool>,
    #[serde(default)]
    cors_origins: Vec<String>,
    #[serde(default)]
    exec: BTreeMap<String, ExecSpec>,
}

struct Settings {
    listen: SocketAddr,
    config: Config,
    demo: bool,
    exec: BTreeMap<String, ExecSpec>,
}

fn settings(args: ServeArgs) -> Result<Settings, String> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let d = Config::default();
    let config = Config {
        body_limit: args
            .body_limit
            .or(file.body_limit)
            .map_or(d.body_limit, |b| b.as_u64() as usize),
        retention: args.retention.or(file.retention).unwrap_or(d.retention),
        max_retained: args
            .max_retained
            .or(file.max_retained)
            .unwrap_or(d.max_retained),
        max_active_runs: args
            .max_active_runs
            .or(file.max_active_runs)
            .unwrap_or(d.max_active_runs),
        max_events_per_run: args
            .max_events_per_run
            .or(file.max_events_per_run)
            .unwrap_or(d.max_events_per_run),
        keep_alive: args.keep_alive.or(file.keep_alive).unwrap_or(d.keep_alive),
        retry: args.retry.or(file.retry).unwrap_or(d.retry),
        grace: args.grace.or(file.grace).unwrap_or(d.grace),
        cors_origins: if args.cors_origin.is_empty() {
            file.cors_origins
        } else {
            args.cors_origin
        },
        ..d
    };
    if config.keep_alive.is_zero() {
        return Err("--keep-alive must be longer than 0s".into());
    }
    let mut exec = file.exec;
    for flag in &args.exec {
        let (name, command) = flag
            .split_once('=')
            .ok_or_else(|| format!("--exec {flag:?}: write it as NAME='program arg…'"))?;
        let spec =
            ExecSpec::from_command_line(command).map_err(|e| format!("--exec {name}: {e}"))?;
        if exec.insert(name.to_owned(), spec).is_some() {
            return Err(format!(
                "--exec {name}: defined twice (flags and config file)"
            ));
        }
    }
    let demo = !args.no_demo && file.demo.unwrap_or(true);
    Ok(Settings {
        listen: args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".parse().expect("a valid address")),
        config,
        demo,
        exec,
    })
}

fn build_server(s: &Settings) -> Result<Server, String> {
    let mut builder = Server::builder().config(s.config.clone());
    let mut demo_names = Vec::new();
    if s.demo {
        builder = builder.demo();
        let demo = Server::builder()
            .demo()
            .build()
            .map_err(|e| e.to_string())?;
        demo_names.extend(demo.object_names().map(str::to_owned));
    }
    for (name, spec) in &s.exec {
        ObjectName::new(name.as_str()).map_err(|e| format!("exec object: {e}"))?;
        // Registering it would silently replace the demo object.
        if demo_names.contains(name) {
            return Err(format!(
                "exec object {name}: a demo object has this name; rename it or use --no-demo"
            ));
        }
        let handler = spec
            .handler()
            .map_err(|e| format!("exec object {name}: {e}"))?;
        builder = builder.object_with(name, spec.options(), handler);
    }
    builder.build().map_err(|e| e.to_string())
}

pub fn main(args: ServeArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LONGRUN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = settings(args).and_then(|s| build_server(&s).map(|server| (s, server)));
    let (settings, server) = match result {
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("longrun serve: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("longrun serve: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings, server)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("longrun serve: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings, server: Server) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", settings.listen),
            )
        })?;
    let addr = listener.local_addr()?;
    let objects: Vec<&str> = server.object_names().collect();
    tracing::info!(objects = ?objects, "serving longrun/1");
    // The handlers go in before the address is printed: whoever reads it may send SIGTERM at
    // once, and without a handler that signal would kill the process instead of draining it.
    let shutdown = shutdown_signal()?;
    // On stdout, one line, so scripts and tests can learn the port when --listen used port 0.
    println!("longrun listening on http://{addr}");
    longrun_server::serve(listener, server, shutdown).await
}

/// Installs the SIGINT and SIGTERM handlers now; the future completes on the first signal.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}
