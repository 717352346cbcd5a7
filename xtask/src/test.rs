//! `cargo xtask test`: formatting, lints, the wasm build of the shared crates, and every
//! test suite (the Rust one beside a throwaway PostgreSQL cluster, `pg.rs`), then schemathesis
//! over the served OpenAPI document (`schemathesis.rs`), the JavaScript, Python and Go
//! suites, and the install suite over `target/dist`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::{cargo, ensure_target, step};

fn run_all(quick: bool) -> Result<(), String> {
    step("format", cargo().args(["fmt", "--all", "--check"]))?;
    if !quick {
        step(
            "lints",
            cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
        // The browser SDK wraps the client core: it and the wire types must build for wasm.
        ensure_target("wasm32-unknown-unknown")?;
        step(
            "wasm build",
            cargo().args([
                "build",
                "-p",
                "longrun-proto",
                "-p",
                "longrun",
                "--target",
                "wasm32-unknown-unknown",
            ]),
        )?;
    }
    let mut totals = Totals::default();
    {
        // A throwaway PostgreSQL cluster for the Postgres store's tests, stopped (by the
        // guard) when they end, passed or not. Without one they skip themselves.
        let pg = crate::pg::start()?;
        let mut rust = cargo();
        rust.args(["test", "--workspace"]);
        if let Some(pg) = &pg {
            rust.env(crate::pg::ENV, pg.url());
        }
        counted("rust tests", &mut rust, &mut totals)?;
    }
    // Schemathesis over the served OpenAPI document (every phase, every check).
    let (passed, failed) = crate::schemathesis::test()?;
    totals.passed += passed;
    totals.failed += failed;
    // The JavaScript SDK: napi and wasm builds, tsc, node --test (Node, wasm-in-Node, Chromium).
    let (passed, failed) = crate::js::test()?;
    totals.passed += passed;
    totals.failed += failed;
    // The Python SDK: its wheel in a venv, pytest (conformance, behaviour, mypy), other CPythons.
    let (passed, failed) = crate::python::test()?;
    totals.passed += passed;
    totals.failed += failed;
    // The Go SDK: the C ABI's static library, then go vet and go test -race in go/.
    let (passed, failed) = crate::go::test()?;
    totals.passed += passed;
    totals.failed += failed;
    // Every package users install (`cargo xtask dist`), installed where no Rust toolchain is.
    let (passed, failed) = crate::install_test::test()?;
    totals.passed += passed;
    totals.failed += failed;
    // One plain closing line over every suite, since the last runner's own summary may be a
    // binary without tests (a doc-test run, say).
    println!("tests: {} passed, {} failed", totals.passed, totals.failed);
    Ok(())
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

/// Run a test command, echoing its output while adding up its `N passed; M failed` lines.
fn counted(name: &str, cmd: &mut Command, totals: &mut Totals) -> Result<(), String> {
    eprintln!("\n==> {name}: {cmd:?}");
    let mut child = cmd
        .current_dir(crate::root())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{name}: cannot start {:?}: {e}", cmd.get_program()))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| format!("{name}: reading its output: {e}"))?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            totals.passed += count(rest, " passed");
            totals.failed += count(rest, " failed");
        }
    }
    let status = child.wait().map_err(|e| format!("{name}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{name} failed ({status})"))
    }
}

/// The number before `label` in a summary like `ok. 3 passed; 0 failed; …`.
fn count(summary: &str, label: &str) -> u64 {
    summary
        .split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(label.trim_start())
                .map(str::trim)
        })
        .and_then(|n| n.split_whitespace().last()?.parse().ok())
        .unwrap_or(0)
}

pub fn run(args: &[String]) -> Result<(), String> {
    let quick = args.iter().any(|a| a == "--quick");
    run_all(quick)
}
