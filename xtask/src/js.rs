//! The JavaScript SDK (`js/`, over `bindings/node` and `bindings/wasm`): `cargo xtask js build`
//! builds both native halves into the package, `test()` runs its suites for `cargo xtask
//! test`, `bench()` the `js` benchmark.
//!
//! With `CI=true` a missing tool is an error (and what can be installed is: the rustup target,
//! npm packages, Debian's chromium); on a dev machine it is a loud SKIP.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{apt_install, cargo, ci, ensure_target, root, step, target_dir};

/// Must equal the exact `wasm-bindgen` version pinned in bindings/wasm/Cargo.toml.
const WASM_BINDGEN: &str = "0.2.130";

fn js_dir() -> PathBuf {
    root().join("js")
}

fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A tool the JS suites cannot do without: an error in CI, a loud skip elsewhere.
fn missing(what: &str) -> Result<(), String> {
    if ci() {
        return Err(format!("js: {what} (required with CI=true)"));
    }
    eprintln!("\n!!!!!!!! SKIP js suites: {what} !!!!!!!!\n");
    Ok(())
}

fn npm(args: &[&str]) -> Command {
    let mut cmd = Command::new("npm");
    cmd.args(args).current_dir(js_dir());
    cmd
}

/// Run in `js/` (`step` runs from the workspace root).
fn in_js(name: &str, cmd: &mut Command) -> Result<(), String> {
    eprintln!("\n==> {name}: {cmd:?}");
    let status = cmd
        .current_dir(js_dir())
        .status()
        .map_err(|e| format!("{name}: cannot start {:?}: {e}", cmd.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{name} failed ({status})"))
    }
}

/// The file name Node's `process.platform`-`process.arch` give, as js/src/node.js loads it.
fn addon_name() -> String {
    let platform = match std::env::consts::OS {
        "macos" => "darwin",
        "windows" => "win32",
        other => other,
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        "x86" => "ia32",
        other => other,
    };
    format!("longrun.{platform}-{arch}.node")
}

fn cdylib(dir: &Path, name: &str) -> PathBuf {
    dir.join(match std::env::consts::OS {
        "macos" => format!("lib{name}.dylib"),
        "windows" => format!("{name}.dll"),
        _ => format!("lib{name}.so"),
    })
}

/// The pinned wasm-bindgen CLI, installed once into target/tools.
fn wasm_bindgen() -> Result<PathBuf, String> {
    let tools = root().join("target/tools");
    let bin = tools.join("bin/wasm-bindgen");
    let version = Command::new(&bin).arg("--version").output();
    if version.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(WASM_BINDGEN)) {
        return Ok(bin);
    }
    // Without --locked: with it, resolution fails (see shared/docs/toolchain.md).
    step(
        "install wasm-bindgen CLI",
        cargo()
            .args([
                "install",
                "wasm-bindgen-cli",
                "--version",
                WASM_BINDGEN,
                "--root",
            ])
            .arg(&tools),
    )?;
    Ok(bin)
}

/// Build the napi addon into js/native/ and the wasm module into js/wasm/.
pub fn build(release: bool) -> Result<(), String> {
    let profile = if release { "release" } else { "debug" };
    let mut napi = cargo();
    napi.args(["build", "-p", "longrun-node"]);
    if release {
        napi.arg("--release");
    }
    step("napi addon", &mut napi)?;
    let native = js_dir().join("native");
    std::fs::create_dir_all(&native).map_err(|e| format!("{}: {e}", native.display()))?;
    let lib = cdylib(&target_dir().join(profile), "longrun_node");
    std::fs::copy(&lib, native.join(addon_name()))
        .map_err(|e| format!("copying {}: {e}", lib.display()))?;
    wasm(release, &js_dir().join("wasm"))
}

/// Build the wasm module and its wasm-bindgen glue into `out` (js/wasm/ in the checkout;
/// `cargo xtask dist` stages its own); optimised by wasm-opt in release.
pub fn wasm(release: bool, out: &Path) -> Result<(), String> {
    let profile = if release { "release" } else { "debug" };
    ensure_target("wasm32-unknown-unknown")?;
    let mut wasm = cargo();
    wasm.args([
        "build",
        "-p",
        "longrun-wasm",
        "--target",
        "wasm32-unknown-unknown",
    ]);
    if release {
        wasm.arg("--release");
    }
    step("wasm module", &mut wasm)?;
    let module = target_dir()
        .join("wasm32-unknown-unknown")
        .join(profile)
        .join("longrun_wasm.wasm");
    step(
        "wasm-bindgen",
        Command::new(wasm_bindgen()?)
            .args(["--target", "web", "--out-name", "longrun_wasm", "--out-dir"])
            .arg(out)
            .arg(&module),
    )?;
    if release {
        // The npm package `binaryen`'s wasm-opt (Debian's wasm-opt 108 writes broken modules).
        let out = out.join("longrun_wasm_bg.wasm");
        in_js(
            "wasm-opt",
            Command::new("node")
                .arg("node_modules/binaryen/bin/wasm-opt")
                .arg("-O2")
                .arg(&out)
                .arg("-o")
                .arg(&out),
        )?;
    }
    Ok(())
}

/// `npm ci` in js/ unless it has run (the dev dependencies: binaryen's wasm-opt, tsc).
pub fn ensure_node_modules() -> Result<(), String> {
    if js_dir().join("node_modules").exists() {
        return Ok(());
    }
    npm_ci()
}

fn npm_ci() -> Result<(), String> {
    in_js("npm ci", &mut npm(&["ci", "--no-audit", "--no-fund"]))
}

/// Debian's chromium for the browser test: installed in CI, a loud skip (in the test) elsewhere.
fn ensure_chromium() -> Result<(), String> {
    if Path::new("/usr/bin/chromium").exists() || !ci() {
        return Ok(());
    }
    apt_install("chromium")
}

/// Every JS suite; the passed and failed counts of `node --test`.
pub fn test() -> Result<(u64, u64), String> {
    if !have("node", "--version") || !have("npm", "--version") {
        missing("node and npm are not installed")?;
        return Ok((0, 0));
    }
    npm_ci()?;
    build(false)?;
    step(
        "reference server",
        cargo().args(["build", "-p", "longrun-cli"]),
    )?;
    in_js(
        "tsc",
        Command::new("node").args([
            "node_modules/typescript/bin/tsc",
            "--noEmit",
            "-p",
            "examples",
        ]),
    )?;
    ensure_chromium()?;
    node_test()
}

/// NODE_OPTIONS for the JS suite: Node 20 and 21 give the wasm build a global `WebSocket`
/// (its WebSocket transport, spec §28) only behind a flag; 22 on have it by default.
fn node_options() -> Result<String, String> {
    let out = Command::new("node")
        .args(["-p", "process.versions.node"])
        .output()
        .map_err(|e| format!("js tests: cannot start node: {e}"))?;
    let version = String::from_utf8_lossy(&out.stdout);
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.trim().parse().ok())
        .ok_or_else(|| format!("js tests: node printed no version ({version:?})"))?;
    let mut options = std::env::var("NODE_OPTIONS").unwrap_or_default();
    if major < 22 {
        options.push_str(" --experimental-websocket");
    }
    Ok(options.trim().to_owned())
}

/// `node --test` with the TAP reporter, echoed, adding up its `# pass N` / `# fail N`.
fn node_test() -> Result<(u64, u64), String> {
    use std::io::{BufRead, BufReader};
    let mut cmd = Command::new("node");
    cmd.args(["--test", "--test-reporter=tap", "test/"])
        .env("LONGRUN_BIN", target_dir().join("debug/longrun"))
        .env("NODE_OPTIONS", node_options()?)
        .current_dir(js_dir())
        .stdout(Stdio::piped());
    eprintln!("\n==> js tests: {cmd:?}");
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("js tests: cannot start node: {e}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| format!("js tests: reading their output: {e}"))?;
        println!("{line}");
        let number = |prefix: &str| {
            line.strip_prefix(prefix)
                .and_then(|n| n.trim().parse::<u64>().ok())
        };
        if let Some(n) = number("# pass ") {
            passed += n;
        }
        if let Some(n) = number("# fail ") {
            failed += n;
        }
    }
    let status = child.wait().map_err(|e| format!("js tests: {e}"))?;
    if status.success() {
        Ok((passed, failed))
    } else {
        Err(format!("js tests failed ({status}): {failed} failed"))
    }
}

/// `cargo xtask bench js`: 100,000 events through the Node SDK, the wasm build in Node, the
/// `eventsource` package and a plain fetch parser, on one release server.
pub fn bench() -> Result<(), String> {
    npm_ci()?;
    build(true)?;
    step(
        "reference server (release)",
        cargo().args(["build", "--release", "-p", "longrun-cli"]),
    )?;
    in_js(
        "js benchmark",
        Command::new("node")
            .arg("bench/drain.js")
            .env("LONGRUN_BIN", target_dir().join("release/longrun")),
    )
}

/// `cargo xtask js build [--release]`, `cargo xtask js test` (the JS part of `cargo xtask test`).
pub fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("build") => {
            ensure_node_modules()?;
            build(args.iter().any(|a| a == "--release"))
        }
        Some("test") => {
            let (passed, failed) = test()?;
            println!("js tests: {passed} passed, {failed} failed");
            Ok(())
        }
        _ => Err("usage: cargo xtask js build [--release] | cargo xtask js test".into()),
    }
}
