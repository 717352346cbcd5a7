//! `cargo xtask test`: formatting, lints, the wasm build of the shared crates, and every
//! test suite. Later issues add the Python, JavaScript and Go suites here.

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
        // The browser SDK will use longrun-proto: it must stay free of I/O and build for wasm.
        ensure_target("wasm32-unknown-unknown")?;
        step(
            "wasm build",
            cargo().args([
                "build",
                "-p",
                "longrun-proto",
                "--target",
                "wasm32-unknown-unknown",
            ]),
        )?;
    }
    // Last, so the test runner's summary lines close the output.
    step("rust tests", cargo().args(["test", "--workspace"]))
}

pub fn run(args: &[String]) -> Result<(), String> {
    let quick = args.iter().any(|a| a == "--quick");
    run_all(quick)
}
