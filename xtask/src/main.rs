//! `cargo xtask <command>`: the project's build and test entry points (the cargo-xtask
//! pattern: plain Rust, no dependencies, each command in its own module).
//!
//! - `cargo xtask test`  — every suite the repository has; this is what CI runs.
//! - `cargo xtask bench` — the benchmarks, printed side by side with their peers.
//! - `cargo xtask schemathesis` — the OpenAPI fuzz suite alone (`schemathesis.rs`).
//! - `cargo xtask pg -- CMD …` — CMD beside a throwaway PostgreSQL cluster (`pg.rs`).
//! - `cargo xtask dist` — every package users install, into `target/dist` (`dist.rs`).

mod bench;
mod dist;
mod go;
mod install_test;
mod js;
mod pg;
mod python;
mod schemathesis;
mod test;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("dist") => dist::run(&args[1..]),
        Some("go") => go::run(&args[1..]),
        Some("js") => js::run(&args[1..]),
        Some("pg") => pg::run(&args[1..]),
        Some("python") => python::run(&args[1..]),
        Some("schemathesis") => schemathesis::test().map(drop),
        _ => {
            eprintln!(
                "usage: cargo xtask test [--quick]   run every suite (what CI runs)\n       \
                 cargo xtask bench           run the benchmarks\n       \
                 cargo xtask dist [--quick] | test   build every package users install into target/dist (--quick: the debug builds, cargo package --no-verify), or run the install suite\n       \
                 cargo xtask go [--release] | test | bench   build the C library the Go module links (into go/lib), or its suite or benchmark alone\n       \
                 cargo xtask js build [--release] | test   the JS package: build its native halves, or its suites\n       \
                 cargo xtask python test | bench   the Python SDK's suite or benchmark alone\n       \
                 cargo xtask schemathesis   schemathesis over the served OpenAPI document alone\n       \
                 cargo xtask pg [--] CMD [ARGS...]   run CMD beside a throwaway PostgreSQL cluster (LONGRUN_TEST_POSTGRES and PG* set), e.g. `cargo xtask pg -- psql -c 'select 1'`"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR` when set (a worktree sharing another's
/// build), else `target/`. Tools and venvs stay in the workspace's own `target/`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

/// Run a command from the workspace root, echoing it first; fail with its name.
fn step(step: &str, cmd: &mut Command) -> Result<(), String> {
    step_in(&root(), step, cmd)
}

/// `step`, run in `dir`.
fn step_in(dir: &Path, step: &str, cmd: &mut Command) -> Result<(), String> {
    eprintln!("\n==> {step}: {cmd:?}");
    let status = cmd
        .current_dir(dir)
        .status()
        .map_err(|e| format!("{step}: cannot start {:?}: {e}", cmd.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{step} failed ({status})"))
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Is a rustup target installed? Install it if not (CI starts from a bare toolchain).
fn ensure_target(target: &str) -> Result<(), String> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| format!("rustup is needed to add the {target} target: {e}"))?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == target)
    {
        return Ok(());
    }
    step(
        "add target",
        Command::new("rustup").args(["target", "add", target]),
    )
}

/// `CI=true`: a missing tool is an error, and what can be installed is.
fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `apt-get install -y PACKAGE` (Debian's packages, for CI), after `apt-get update` if the
/// first try fails: a fresh machine may not have package lists yet.
fn apt_install(package: &str) -> Result<(), String> {
    let install = || {
        step(
            &format!("install {package}"),
            Command::new("apt-get").args(["install", "-y", package]),
        )
    };
    install().or_else(|_| {
        step("apt-get update", Command::new("apt-get").arg("update"))?;
        install()
    })
}
