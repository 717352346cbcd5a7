//! The OpenAPI fuzz suite: schemathesis (from PyPI, in a venv of its own,
//! `target/schemathesis-venv`, made once and reused) over `/_openapi.json` of a live
//! `longrun serve --store memory`, with every phase (examples, coverage, fuzzing, stateful)
//! and every check. The served document carries one submit operation per object with that
//! object's argument schema (spec §13.2, §13.6), so what it finds is a place where the
//! document and the server disagree. What is left out, and why, is in
//! `xtask/schemathesis/schemathesis.toml` (and `hooks.py` beside it).
//!
//! Without `python3`, or when schemathesis cannot be installed (no network), a developer gets
//! a loud SKIP; with `CI=true` either is an error.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use crate::python::{bin, python3, venv};
use crate::{ci, root};

/// Pinned: a newer schemathesis brings new checks, which should land as a change of their own.
const PACKAGES: &[&str] = &["schemathesis==4.32.5"];
/// Cases per operation and phase: the whole suite stays under about two minutes on 2 cores.
const MAX_EXAMPLES: &str = "20";
/// Fixed, so that a run is repeatable; change it locally to explore further.
const SEED: &str = "20261203";

fn skip(why: &str) -> Result<(u64, u64), String> {
    if ci() {
        return Err(format!("the OpenAPI fuzz suite (CI=true): {why}"));
    }
    eprintln!(
        "\n**********************************************************************\n\
         SKIP: the OpenAPI fuzz suite (schemathesis): {why}\n\
         **********************************************************************"
    );
    Ok((0, 0))
}

/// The server, stopped when dropped (passed or not).
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `longrun serve` on a free loopback port; its base URL, as it prints it.
fn serve() -> Result<(Serving, String), String> {
    let server = crate::python::server_binary()?;
    let mut child = Command::new(&server)
        .args(["serve", "--store", "memory", "--listen", "127.0.0.1:0"])
        // The `bytes` demo writes as much as it is asked to: bound what one run holds.
        .args(["--max-stream-bytes", "1MiB"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", server.display()))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let serving = Serving(child);
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .map_err(|e| format!("reading the server's address: {e}"))?;
    let base = first
        .trim()
        .strip_prefix("longrun listening on ")
        .ok_or_else(|| format!("the server said {first:?}, not its address"))?
        .to_owned();
    Ok((serving, base))
}

/// The suite; `(1, 0)` when schemathesis found nothing, for the totals.
pub fn test() -> Result<(u64, u64), String> {
    let Some(python) = python3() else {
        return skip("no python3 found (set PYTHON=...)");
    };
    let dir = root().join("target/schemathesis-venv");
    if let Err(e) = venv(&python, &dir, PACKAGES) {
        return skip(&format!("schemathesis could not be installed ({e})"));
    }
    let (_serving, base) = serve()?;
    let here = root().join("xtask/schemathesis");
    let mut cmd = Command::new(bin(&dir, "schemathesis"));
    cmd.args(["--config-file", "schemathesis.toml", "--no-color", "run"])
        .arg(format!("{base}/_openapi.json"))
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        // Every check but one, which schemathesis.toml explains.
        .args(["--checks", "all", "--exclude-checks", "use_after_free"])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", SEED])
        // One worker: with two, hypothesis's `ast.parse` of filter lambdas runs on two threads
        // at once, which CPython 3.11.7 (the CI's) can fail with "SystemError: AST constructor
        // recursion depth mismatch" (a CPython bug fixed in later 3.11 releases).
        .args(["--workers", "1", "--generation-database", "none"])
        .arg("--report-dir")
        .arg(root().join("target/schemathesis-report"))
        // `hooks.py` is found from here.
        .current_dir(&here);
    eprintln!("\n==> openapi fuzz: {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("openapi fuzz: cannot start schemathesis: {e}"))?;
    if status.success() {
        Ok((1, 0))
    } else {
        Err(format!(
            "openapi fuzz: schemathesis found failures ({status}); each comes with a curl line \
             to reproduce it against `longrun serve --store memory`"
        ))
    }
}
