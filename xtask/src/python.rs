//! The Python SDK's suite and benchmark: a venv in `target/py-venv` (made once, reused), the
//! abi3 wheel built by maturin and installed there, pytest over `python/tests` (conformance,
//! behaviour, `mypy --strict` on a typed example), then the same tests on the oldest and newest
//! other CPython found (pyenv's or `python3.X` on PATH), since one abi3 wheel serves them all.
//!
//! Without `python3` a developer gets a loud SKIP; with `CI=true` a missing tool is an error.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{cargo, ci, root, step, target_dir};

/// What the main venv needs from PyPI (the benchmark's peers included, so `bench` reuses it).
const TOOLS: &[&str] = &[
    "maturin>=1.9.4,<2",
    "pytest",
    "mypy",
    "tqdm",
    "httpx",
    "httpx-sse",
];
/// Oldest CPython the abi3 wheel supports (pyproject's `requires-python`).
const OLDEST_MINOR: u32 = 9;

pub fn python3() -> Option<PathBuf> {
    let name = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| PathBuf::from(name))
}

pub fn bin(venv: &Path, tool: &str) -> PathBuf {
    venv.join("bin").join(tool)
}

/// A venv at `dir` made by `python` (reused when there), with `packages` installed once: a
/// stamp file remembers what was installed, so a warm run does not touch PyPI.
pub fn venv(python: &Path, dir: &Path, packages: &[&str]) -> Result<(), String> {
    if !bin(dir, "python").exists() {
        step(
            "python venv",
            Command::new(python).arg("-m").arg("venv").arg(dir),
        )?;
    }
    let stamp = dir.join(".longrun-tools");
    let want = packages.join("\n");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(want.as_str()) {
        step(
            "python tools",
            Command::new(bin(dir, "python"))
                .args(["-m", "pip", "install", "--quiet", "--upgrade"])
                .args(packages),
        )?;
        std::fs::write(&stamp, want).map_err(|e| format!("{}: {e}", stamp.display()))?;
    }
    Ok(())
}

/// Build the abi3 wheel (release, into `target/py-wheels`) with the venv's maturin; its path.
fn wheel(venv: &Path) -> Result<PathBuf, String> {
    let out = root().join("target/py-wheels");
    let _ = std::fs::remove_dir_all(&out);
    // From `python/`, where maturin finds pyproject.toml (which names the crate).
    let mut cmd = Command::new(bin(venv, "maturin"));
    cmd.args(["build", "--release", "-o"])
        .arg(&out)
        .current_dir(root().join("python"));
    eprintln!("\n==> python wheel: {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("python wheel: cannot start maturin: {e}"))?;
    if !status.success() {
        return Err(format!("python wheel failed ({status})"));
    }
    std::fs::read_dir(&out)
        .map_err(|e| format!("{}: {e}", out.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| "maturin built no wheel".to_owned())
}

fn install(venv: &Path, wheel: &Path) -> Result<(), String> {
    step(
        "python install",
        Command::new(bin(venv, "python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--force-reinstall",
                "--no-deps",
            ])
            .arg(wheel),
    )
}

/// The reference server for the tests (debug build; `cargo test` has usually built it).
pub fn server_binary() -> Result<PathBuf, String> {
    step(
        "server for python",
        cargo().args(["build", "--quiet", "-p", "longrun-cli"]),
    )?;
    Ok(target_dir().join("debug/longrun"))
}

/// Run pytest, echoing its output; `(passed, failed)` from its closing summary line.
fn pytest(name: &str, venv: &Path, server: &Path, args: &[&str]) -> Result<(u64, u64), String> {
    // The venv's `pytest` script, not `python -m pytest`: that would put `python/` first on
    // sys.path, and the source tree (without the native module) would shadow the wheel.
    let mut cmd = Command::new(bin(venv, "pytest"));
    cmd.args(["-q", "-p", "no:cacheprovider", "tests"])
        .args(args)
        .env("LONGRUN_BIN", server)
        .current_dir(root().join("python"))
        .stdout(Stdio::piped());
    eprintln!("\n==> {name}: {cmd:?}");
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{name}: cannot start pytest: {e}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| format!("{name}: reading its output: {e}"))?;
        println!("{line}");
        // e.g. "2 failed, 160 passed, 40 skipped in 5.12s" (with or without `=` around it)
        let summary = line.trim_matches(|c| c == '=' || c == ' ');
        if summary.contains(" in ") && (summary.contains(" passed") || summary.contains(" failed"))
        {
            (passed, failed) = (count(summary, "passed"), count(summary, "failed"));
            failed += count(summary, "error") + count(summary, "errors");
        }
    }
    let status = child.wait().map_err(|e| format!("{name}: {e}"))?;
    if status.success() {
        Ok((passed, failed))
    } else {
        Err(format!("{name} failed ({status})"))
    }
}

/// The number before `label` in a pytest summary.
fn count(summary: &str, label: &str) -> u64 {
    let summary = summary.split(" in ").next().unwrap_or("");
    summary
        .split(',')
        .filter_map(|part| {
            let mut words = part.split_whitespace();
            let n: u64 = words.next()?.parse().ok()?;
            (words.next()? == label).then_some(n)
        })
        .sum()
}

/// Other CPythons on this machine: `(minor, path)` for 3.9 and newer, from pyenv's versions and
/// `python3.X` on PATH.
fn other_pythons() -> Vec<(u32, PathBuf)> {
    let mut found: Vec<(u32, PathBuf)> = Vec::new();
    let pyenv_root = Command::new("pyenv")
        .arg("root")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(Ok(dirs)) = pyenv_root.map(|r| std::fs::read_dir(r.join("versions"))) {
        candidates.extend(dirs.filter_map(|d| Some(d.ok()?.path().join("bin/python3"))));
    }
    candidates.extend((OLDEST_MINOR..=20).map(|m| PathBuf::from(format!("python3.{m}"))));
    for path in candidates {
        let Ok(out) = Command::new(&path)
            .args(["-c", "import sys; print(sys.version_info[1])"])
            .output()
        else {
            continue;
        };
        let minor = String::from_utf8_lossy(&out.stdout).trim().parse::<u32>();
        match minor {
            Ok(minor)
                if out.status.success()
                    && minor >= OLDEST_MINOR
                    && !found.iter().any(|(m, _)| *m == minor) =>
            {
                found.push((minor, path))
            }
            _ => {}
        }
    }
    found.sort();
    found
}

/// The Python suite; `(passed, failed)` for the totals.
pub fn test() -> Result<(u64, u64), String> {
    let Some(python) = python3() else {
        if ci() {
            return Err("python3 is needed for the Python SDK's tests (CI=true)".into());
        }
        eprintln!(
            "\n**********************************************************************\n\
             SKIP: the Python SDK's tests: no python3 found (set PYTHON=...)\n\
             **********************************************************************"
        );
        return Ok((0, 0));
    };
    let main = root().join("target/py-venv");
    venv(&python, &main, TOOLS)?;
    let wheel = wheel(&main)?;
    install(&main, &wheel)?;
    let server = server_binary()?;
    let (mut passed, mut failed) = pytest("python tests", &main, &server, &[])?;

    // The same wheel on the oldest and the newest other CPython (mypy is the main venv's job).
    let main_minor = Command::new(bin(&main, "python"))
        .args(["-c", "import sys; print(sys.version_info[1])"])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u32>()
                .ok()
        });
    let others = other_pythons();
    let mut ends: Vec<&(u32, PathBuf)> = others.first().into_iter().chain(others.last()).collect();
    ends.dedup_by_key(|(m, _)| *m);
    ends.retain(|(m, _)| Some(*m) != main_minor);
    if ends.is_empty() {
        eprintln!("\n==> python versions: no CPython other than the main one found");
    }
    for (minor, path) in ends {
        let dir = root().join(format!("target/py-venv-3.{minor}"));
        venv(path, &dir, &["pytest"])?;
        install(&dir, &wheel)?;
        let (p, f) = pytest(
            &format!("python 3.{minor} tests"),
            &dir,
            &server,
            &["-k", "not mypy"],
        )?;
        passed += p;
        failed += f;
    }
    Ok((passed, failed))
}

/// `cargo xtask python test|bench`: the Python suite or benchmark alone.
pub fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("test") => {
            let (passed, failed) = test()?;
            println!("tests: {passed} passed, {failed} failed");
            Ok(())
        }
        Some("bench") => bench(),
        _ => Err("usage: cargo xtask python test | bench".into()),
    }
}

/// `cargo xtask bench python`: drain one 100,000-event `count` run with this SDK and with
/// httpx + httpx-sse, sync and asyncio, against one release server.
pub fn bench() -> Result<(), String> {
    let python = python3().ok_or("python3 is needed for the Python benchmark")?;
    let main = root().join("target/py-venv");
    venv(&python, &main, TOOLS)?;
    let wheel = wheel(&main)?;
    install(&main, &wheel)?;
    step(
        "release server",
        cargo().args(["build", "--release", "--quiet", "-p", "longrun-cli"]),
    )?;
    step(
        "python benchmark",
        Command::new(bin(&main, "python"))
            .arg(root().join("python/bench/drain.py"))
            .arg(target_dir().join("release/longrun")),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_pytest_summaries() {
        let s = "2 failed, 160 passed, 40 skipped in 5.12s";
        assert_eq!(super::count(s, "passed"), 160);
        assert_eq!(super::count(s, "failed"), 2);
        assert_eq!(super::count("19 passed in 2.93s", "failed"), 0);
    }
}
