//! The Go SDK's suite and benchmark. The Go module (`go/`) links the C ABI's static library
//! (`bindings/c`) with cgo from `go/lib/liblongrun_c.a`; this module builds that library (and
//! the `longrun` server the Go tests start) with cargo, copies it there, then runs `go vet` and
//! `go test -race` in `go/` with `GOTOOLCHAIN=local` (never download a toolchain) and
//! `CGO_ENABLED=1`.
//!
//! - `cargo xtask go [--release]` — build the library into `go/lib` (what a Go user runs once);
//!   `cargo xtask go test | bench` — the suite or the benchmark alone.
//! - `go::test()` — part of `cargo xtask test`; `go::bench()` — `cargo xtask bench go`.
//!
//! Without `go` a developer gets a loud SKIP; with `CI=true` a missing `go` is an error.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::{cargo, ci, root, step, target_dir};

/// The seed implementation's module, fetched from the Go module proxy by go/seed.
const SEED_MODULE: &str = "github.com/factorysh/go-longrun";

fn go_available() -> bool {
    Command::new("go")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `go -C go …` with the environment every Go step uses.
fn go(args: &[&str]) -> Command {
    go_in("go", args)
}

/// `go -C <dir> …` (a directory of the workspace) with the environment every Go step uses.
/// The checksum database has no entry for the seed's module (go/seed), so its sums come from
/// go/seed/go.sum alone.
fn go_in(dir: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("go");
    cmd.arg("-C")
        .arg(root().join(dir))
        .args(args)
        .env("GOTOOLCHAIN", "local")
        .env("GONOSUMDB", SEED_MODULE)
        .env("CGO_ENABLED", "1");
    // Go's build cache does not look at C libraries named in `#cgo LDFLAGS` (`go help cache`):
    // a rebuilt liblongrun_c.a would be linked only after `go clean -cache`, so a test could
    // run the library of an earlier build. A macro naming the library's content hash makes it
    // part of the cgo package's cache key. (Go's default CGO_CFLAGS is `-O2 -g`.)
    if let Some(stamp) = lib_stamp() {
        let flags = std::env::var("CGO_CFLAGS").unwrap_or_else(|_| "-O2 -g".into());
        cmd.env(
            "CGO_CFLAGS",
            format!("{flags} -DLONGRUN_LIB_STAMP={stamp:016x}"),
        );
    }
    cmd
}

/// A hash of the library in go/lib, or `None` before it is built.
fn lib_stamp() -> Option<u64> {
    use std::hash::Hasher;
    let bytes = std::fs::read(root().join("go/lib/liblongrun_c.a")).ok()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    hasher.write(&bytes);
    Some(hasher.finish())
}

/// Build the static library and the server in `profile` (`debug` or `release`), and put the
/// library where cgo looks for it (`go/lib`). Returns the server binary.
fn build(release: bool) -> Result<PathBuf, String> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "longrun-c", "-p", "longrun-cli"]);
    if release {
        cmd.arg("--release");
    }
    step("C library and server", &mut cmd)?;
    let profile = target_dir().join(if release { "release" } else { "debug" });
    let lib = profile.join("liblongrun_c.a");
    let dest = root().join("go/lib");
    std::fs::create_dir_all(&dest).map_err(|e| format!("creating {}: {e}", dest.display()))?;
    std::fs::copy(&lib, dest.join("liblongrun_c.a"))
        .map_err(|e| format!("copying {} into go/lib: {e}", lib.display()))?;
    Ok(profile.join("longrun"))
}

/// `cargo xtask go [--release] | test | bench`: build the library the Go module links, or run
/// the Go suite or benchmark alone.
pub fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("test") => {
            let (passed, failed) = test()?;
            println!("tests: {passed} passed, {failed} failed");
            Ok(())
        }
        Some("bench") => bench(),
        _ => {
            build(args.iter().any(|a| a == "--release"))?;
            eprintln!("go/lib/liblongrun_c.a is ready: `cd go && GOTOOLCHAIN=local go test ./...`");
            Ok(())
        }
    }
}

fn skip(what: &str) -> Result<(), String> {
    if ci() {
        return Err(format!(
            "{what}: `go` is not installed, and CI=true needs it"
        ));
    }
    eprintln!(
        "\n==> {what}\n\n    ******** SKIP: `go` is not installed; the Go SDK was NOT tested ********\n"
    );
    Ok(())
}

/// Vet and test the Go module (race detector on): the conformance scenarios, context
/// cancellation, resume through a cutting proxy, error mapping, shared clients; vet the example
/// worker (examples/worker-go). Returns the passed and failed test counts (`go test -v`'s
/// `--- PASS` / `--- FAIL` lines, subtests included).
pub fn test() -> Result<(u64, u64), String> {
    if !go_available() {
        skip("go tests")?;
        return Ok((0, 0));
    }
    let server = build(false)?;
    step("go vet", &mut go(&["vet", "./..."]))?;
    let mut cmd = go(&["test", "-race", "-count=1", "-v", "./..."]);
    cmd.env("LONGRUN_BIN", &server);
    let (passed, failed) = counted("go tests", &mut cmd)?;
    // The seed's own Go client, unchanged, against our server (spec §23).
    step("go vet (seed)", &mut go_in("go/seed", &["vet", "./..."]))?;
    let mut cmd = go_in("go/seed", &["test", "-count=1", "-v", "./..."]);
    cmd.env("LONGRUN_BIN", &server);
    let (seed_passed, seed_failed) = counted("seed client tests", &mut cmd)?;
    // The example worker node; crates/longrun-server/tests/worker_go.rs builds and runs it.
    step(
        "go vet (examples/worker-go)",
        &mut go_in("examples/worker-go", &["vet", "./..."]),
    )?;
    Ok((passed + seed_passed, failed + seed_failed))
}

/// Run a `go test -v` command, echoing its output and counting its `--- PASS` / `--- FAIL`
/// lines (subtests included).
fn counted(name: &str, cmd: &mut Command) -> Result<(u64, u64), String> {
    eprintln!("\n==> {name}: {cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{name}: cannot start go: {e}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| format!("{name}: reading its output: {e}"))?;
        let trimmed = line.trim_start();
        if trimmed.starts_with("=== ") {
            continue; // RUN / PAUSE / CONT: noise
        }
        if trimmed.starts_with("--- PASS") {
            passed += 1;
        } else if trimmed.starts_with("--- FAIL") {
            failed += 1;
        }
        println!("{line}");
    }
    let status = child.wait().map_err(|e| format!("{name}: {e}"))?;
    println!("{name} result: {passed} passed; {failed} failed");
    if status.success() {
        Ok((passed, failed))
    } else {
        Err(format!("{name} failed ({status})"))
    }
}

/// Build the seed's own server (go/seed/cmd/seedserver, around go-longrun v0.1.0's packages)
/// for `cargo xtask bench server`, which measures it beside ours. `None`, said loudly, when
/// `go` is missing.
pub fn seed_server() -> Result<Option<PathBuf>, String> {
    if !go_available() {
        skip("seed server for the server benchmark")?;
        return Ok(None);
    }
    let out = target_dir().join("seed/seedserver");
    step(
        "seed server",
        &mut go_in(
            "go/seed",
            &["build", "-o", &out.to_string_lossy(), "./cmd/seedserver"],
        ),
    )?;
    Ok(Some(out))
}

/// `cargo xtask bench go`: drain 100,000 events with the Go SDK and with a plain net/http +
/// bufio SSE reader, in one process against one release server (go/bench_test.go).
pub fn bench() -> Result<(), String> {
    if !go_available() {
        return skip("go benchmark");
    }
    let server = build(true)?;
    step(
        "go benchmark",
        go(&[
            "test",
            "-count=1",
            "-run",
            "^TestDrainBenchmark$",
            "-v",
            ".",
        ])
        .env("LONGRUN_BIN", &server)
        .env("LONGRUN_BENCH", "1"),
    )
}
