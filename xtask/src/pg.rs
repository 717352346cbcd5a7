//! A throwaway PostgreSQL cluster for the tests: `cargo xtask test` starts one for the Rust
//! suite and exports it as `LONGRUN_TEST_POSTGRES`; `cargo xtask pg -- CMD …` runs any
//! command beside one, with that variable and libpq's `PGHOST`/`PGPORT`/`PGUSER`/`PGDATABASE`
//! set, so `cargo xtask pg -- psql -c 'select 1'` or `cargo xtask pg -- cargo test -p X` work.
//!
//! The cluster is Debian's server (`/usr/lib/postgresql/N/bin`, the highest N), made by
//! `initdb -A trust -U lr` in a fresh directory under the temp dir (`/tmp` as root), listening
//! on a free loopback port only, so `postgres://lr@127.0.0.1:PORT/postgres` is a superuser URL
//! with no password; tests create their own databases through it. `max_connections=200`, since
//! the tests start many servers with a few connections each. The server refuses to run as root,
//! so as root every server command runs as the `postgres` user (`runuser`). Dropping the
//! [`Cluster`] stops it (`-m immediate`) and removes its directory, also when the tests failed.
//!
//! Without the binaries: with `CI=true`, `apt-get install postgresql`; on a dev machine a loud
//! SKIP, and the env var is not set (the Postgres store tests skip themselves then).

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{apt_install, ci};

/// The variable the tests read: a superuser URL of the cluster.
pub const ENV: &str = "LONGRUN_TEST_POSTGRES";

/// Directories of clusters under the temp dir are named `PREFIX<pid of the xtask>`.
const PREFIX: &str = "longrun-pg-";

/// A running cluster; dropping it stops it and removes its files.
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    as_postgres: bool,
    port: u16,
    url: String,
}

impl Cluster {
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.dir.join("data/postmaster.pid").exists() {
            stop(&self.bin, &self.dir, self.as_postgres);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where cluster directories go: the temp dir, but `/tmp` when the server runs as `postgres`,
/// which must reach it (root's `TMPDIR` may be private to root).
fn base_dir(as_postgres: bool) -> PathBuf {
    if as_postgres {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    }
}

/// The highest `/usr/lib/postgresql/N/bin` that has an `initdb`.
fn server_bin() -> Option<PathBuf> {
    let version = |name: &str| -> Option<Vec<u32>> {
        name.split('.').map(|part| part.parse().ok()).collect()
    };
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let v = version(entry.file_name().to_str()?)?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .max()
        .map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `bin/program`, through `runuser -u postgres` when the server must not run as root.
fn server_cmd(bin: &Path, program: &str, as_postgres: bool) -> Command {
    let mut cmd = if as_postgres {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(bin.join(program));
        cmd
    } else {
        Command::new(bin.join(program))
    };
    cmd.stdin(Stdio::null());
    cmd
}

/// Quoted for the shell that `pg_ctl -o` hands its options to.
fn sh_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// A loopback port nothing listens on now (bound, then released for the server).
fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("postgres: no free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("postgres: no free port: {e}"))
}

fn stop(bin: &Path, dir: &Path, as_postgres: bool) {
    let status = server_cmd(bin, "pg_ctl", as_postgres)
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-m", "immediate", "-s", "stop"])
        .stdout(Stdio::null())
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("postgres: could not stop the cluster in {}", dir.display());
    }
}

/// Clusters an earlier xtask left running (it was killed before its guard ran).
fn stop_stale(bin: &Path, as_postgres: bool) {
    let Ok(entries) = std::fs::read_dir(base_dir(as_postgres)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        if pid.parse::<u32>().is_err() || Path::new("/proc").join(pid).exists() {
            continue;
        }
        let dir = entry.path();
        if dir.join("data/postmaster.pid").exists() {
            stop(bin, &dir, as_postgres);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Run a server command in the cluster's directory; on failure, the error shows `log`.
fn logged(name: &str, cmd: &mut Command, dir: &Path, log: &Path) -> Result<(), String> {
    let status = cmd
        .current_dir(dir)
        .status()
        .map_err(|e| format!("postgres: cannot start {name}: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    Err(format!(
        "postgres: {name} failed ({status})\n--- {} ---\n{}",
        log.display(),
        text.trim_end()
    ))
}

/// Start a cluster; `None` (after a loud SKIP) when the server is not installed on a dev
/// machine. With `CI=true` a missing server is installed.
pub fn start() -> Result<Option<Cluster>, String> {
    let bin = match server_bin() {
        Some(bin) => bin,
        None if ci() => {
            apt_install("postgresql")?;
            server_bin().ok_or("postgres: no /usr/lib/postgresql/*/bin/initdb after install")?
        }
        None => {
            eprintln!(
                "\n!!!!!!!! SKIP postgres: Debian's postgresql is not installed (apt-get install \
                 postgresql); the Postgres store tests will skip !!!!!!!!\n"
            );
            return Ok(None);
        }
    };
    let as_postgres = is_root();
    stop_stale(&bin, as_postgres);

    let dir = base_dir(as_postgres).join(format!("{PREFIX}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).map_err(|e| format!("postgres: {}: {e}", dir.display()))?;
    if as_postgres {
        let chown = Command::new("chown").arg("postgres").arg(&dir).status();
        if !chown.is_ok_and(|s| s.success()) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!(
                "postgres: cannot chown {} to postgres",
                dir.display()
            ));
        }
    }
    let port = free_port()?;
    // From here on the guard removes the directory (and stops a server that started).
    let cluster = Cluster {
        bin: bin.clone(),
        dir: dir.clone(),
        as_postgres,
        port,
        url: format!("postgres://lr@127.0.0.1:{port}/postgres"),
    };

    // initdb's chatter goes to a file of ours; the server's log to one of its own (as root the
    // server runs as `postgres` and could not append to a file root made).
    let init_log = dir.join("initdb.log");
    let log =
        File::create(&init_log).map_err(|e| format!("postgres: {}: {e}", init_log.display()))?;
    let err_log = log.try_clone().map_err(|e| format!("postgres: {e}"))?;
    let data = dir.join("data");
    eprintln!("\n==> postgres: initdb in {}", data.display());
    logged(
        "initdb",
        server_cmd(&bin, "initdb", as_postgres)
            .arg("-D")
            .arg(&data)
            // C collation, UTF-8 text, whatever the machine's locale; no fsync for a throwaway.
            .args([
                "-A",
                "trust",
                "-U",
                "lr",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdout(log)
            .stderr(err_log),
        &dir,
        &init_log,
    )?;

    let server_log = dir.join("server.log");
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off",
        sh_quote(&dir)
    );
    logged(
        "pg_ctl start",
        server_cmd(&bin, "pg_ctl", as_postgres)
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&server_log)
            .arg("-o")
            .arg(options)
            .args(["-w", "-s", "start"])
            .stdout(Stdio::null()),
        &dir,
        &server_log,
    )?;
    eprintln!("==> postgres: {ENV}={}", cluster.url());
    Ok(Some(cluster))
}

/// `cargo xtask pg [--] CMD [ARGS…]`: a cluster for CMD, its URL in `LONGRUN_TEST_POSTGRES`.
pub fn run(args: &[String]) -> Result<(), String> {
    let args = match args.first().map(String::as_str) {
        Some("--") => &args[1..],
        _ => args,
    };
    let Some((program, rest)) = args.split_first() else {
        return Err("usage: cargo xtask pg [--] CMD [ARGS...]".into());
    };
    let cluster = start()?.ok_or("postgres: Debian's postgresql is not installed")?;
    println!("{ENV}={}", cluster.url());
    let status = Command::new(program)
        .args(rest)
        .env(ENV, cluster.url())
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", cluster.port.to_string())
        .env("PGUSER", "lr")
        .env("PGDATABASE", "postgres")
        .status()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{program} failed ({status})"))
    }
}
