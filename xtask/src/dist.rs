//! `cargo xtask dist`: build every package a user installs into `target/dist/`, exactly what
//! would be published, so that none of them needs a Rust toolchain or this checkout:
//!
//! - `longrun-<v>-cp39-abi3-manylinux_2_17_x86_64.whl` (maturin with zig, from PyPI's
//!   `ziglang`, linking against glibc 2.17; `auditwheel show` must accept its tag) and
//!   `longrun-<v>.tar.gz`, the sdist — the wheel is built *from* the sdist, so the sdist builds.
//! - `longrun-<v>.tgz` (npm: the JS wrapper and the wasm build, `optionalDependencies` naming
//!   the platform packages, as napi-rs lays them out) and `longrun-linux-x64-gnu-<v>.tgz` (the
//!   `.node` addon alone).
//! - `longrun-go-<v>.tar.gz`: the Go module with `include/longrun.h` and the release
//!   `lib/liblongrun_c.a` where cgo.go looks, so `go build` needs cgo and a C compiler, not cargo.
//! - `longrun-<v>-x86_64-unknown-linux-gnu.tar.gz`: the `longrun` server and CLI.
//! - `crates/*.crate`: `cargo package` of the four published crates, packaged together so the
//!   unpublished siblings resolve to each other (cargo's multi-package `cargo package`).
//! - `SHA256SUMS` over all of them.
//!
//! First of all, every package must carry the workspace's version (`versions()`).
//! `cargo xtask test` calls `build(Checks::Quick)` for the install suite (`install_test.rs`):
//! the same packaging around the debug builds the test run has already made (server, C
//! library, addon, wasm without wasm-opt), without `cargo package`'s verification build — so
//! CI pays only for the wheel. `cargo xtask dist` builds release and verifies.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{cargo, root, step, step_in, target_dir};

/// The Rust triple, npm platform and Go platform the prebuilt artifacts are for.
pub const TRIPLE: &str = "x86_64-unknown-linux-gnu";
pub const NPM_PLATFORM: &str = "linux-x64-gnu";
/// The crates published to crates.io, in dependency order.
const CRATES: &[&str] = &["longrun-proto", "longrun", "longrun-server", "longrun-cli"];
/// What the dist venv needs from PyPI: maturin, zig for the old glibc baseline, auditwheel.
const PY_TOOLS: &[&str] = &["maturin>=1.9.4,<2", "ziglang>=0.13,<0.16", "auditwheel>=6"];
/// The oldest glibc the wheel links against (`maturin --zig --compatibility`).
const MANYLINUX: &str = "manylinux2014";

/// Where each artifact is, for the install suite.
pub struct Artifacts {
    pub version: String,
    pub server: PathBuf,
    pub wheel: PathBuf,
    pub npm_main: PathBuf,
    pub npm_platform: PathBuf,
    pub go: PathBuf,
}

#[derive(Clone, Copy, PartialEq)]
pub enum Checks {
    /// Release builds; `cargo package` verifies each crate by building it from its `.crate`.
    Full,
    /// The test run's debug builds, `cargo package --no-verify`: for the install suite.
    Quick,
}

pub fn dist_dir() -> PathBuf {
    root().join("target/dist")
}

fn stage_dir() -> PathBuf {
    root().join("target/dist-stage")
}

fn io<T>(what: impl std::fmt::Display, r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn fresh_dir(dir: &Path) -> Result<(), String> {
    if dir.exists() {
        io(dir.display(), std::fs::remove_dir_all(dir))?;
    }
    io(dir.display(), std::fs::create_dir_all(dir))
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    io(
        format!("copying {} to {}", from.display(), to.display()),
        std::fs::copy(from, to),
    )
    .map(drop)
}

/// A file's text, or an error that names it.
fn read(path: &Path) -> Result<String, String> {
    io(path.display(), std::fs::read_to_string(path))
}

/// The first `key = "value"` (TOML) or `"key": "value"` (JSON) at the start of a line after
/// the line `after` (or from the top when `after` is empty).
fn field(text: &str, after: &str, key: &str) -> Option<String> {
    let mut lines = text.lines();
    if !after.is_empty() {
        lines.find(|l| l.trim() == after)?;
    }
    lines.find_map(|line| {
        let line = line.trim();
        let rest = line
            .strip_prefix(key)
            .or_else(|| line.strip_prefix(&format!("\"{key}\"")))?;
        let rest = rest.trim_start().strip_prefix(['=', ':'])?.trim();
        Some(rest.trim_end_matches(',').trim_matches('"').to_owned())
    })
}

/// The workspace's version, after checking that every package says the same: each Cargo
/// manifest (by `version.workspace = true` or the same literal), the versions on the
/// workspace's path dependencies, python/pyproject.toml, js/package.json and its lock file,
/// and the Go module's `Version` (go/version.go). The error lists every disagreement.
pub fn versions() -> Result<String, String> {
    let root = root();
    let workspace = read(&root.join("Cargo.toml"))?;
    let version = field(&workspace, "[workspace.package]", "version")
        .ok_or("Cargo.toml: no version in [workspace.package]")?;
    let mut wrong = Vec::new();
    let mut check = |what: String, found: Option<String>| {
        if found.as_deref() != Some(version.as_str()) {
            wrong.push(format!(
                "{what}: {} (the workspace has {version})",
                found.as_deref().unwrap_or("no version")
            ));
        }
    };
    for dir in ["crates", "bindings"] {
        let mut manifests: Vec<PathBuf> = io(dir, std::fs::read_dir(root.join(dir)))?
            .filter_map(|e| Some(e.ok()?.path().join("Cargo.toml")))
            .filter(|p| p.exists())
            .collect();
        manifests.sort();
        for manifest in manifests {
            let text = read(&manifest)?;
            let found = if text.lines().any(|l| l.trim() == "version.workspace = true") {
                Some(version.clone())
            } else {
                field(&text, "[package]", "version")
            };
            let name = manifest.strip_prefix(&root).unwrap_or(&manifest);
            check(name.display().to_string(), found);
        }
    }
    for line in workspace.lines().filter(|l| l.contains("path = \"crates/")) {
        let found = line
            .split("version = \"")
            .nth(1)
            .and_then(|v| v.split('"').next())
            .map(str::to_owned);
        check(format!("Cargo.toml: `{}`", line.trim()), found);
    }
    let pyproject = read(&root.join("python/pyproject.toml"))?;
    check(
        "python/pyproject.toml".into(),
        field(&pyproject, "[project]", "version"),
    );
    let package = read(&root.join("js/package.json"))?;
    check("js/package.json".into(), field(&package, "", "version"));
    let lock = read(&root.join("js/package-lock.json"))?;
    check("js/package-lock.json".into(), field(&lock, "", "version"));
    let go = read(&root.join("go/version.go"))?;
    let go_version = go
        .lines()
        .find_map(|l| l.trim().strip_prefix("const Version = "))
        .map(|v| v.trim_matches('"').to_owned());
    check("go/version.go".into(), go_version);
    if wrong.is_empty() {
        Ok(version)
    } else {
        Err(format!(
            "packages disagree on the version; make them all say the workspace's:\n  {}",
            wrong.join("\n  ")
        ))
    }
}

/// Build everything into `target/dist` (emptied first).
pub fn build(checks: Checks) -> Result<Artifacts, String> {
    let version = versions()?;
    let dist = dist_dir();
    fresh_dir(&dist)?;
    fresh_dir(&stage_dir())?;

    let built = if checks == Checks::Full {
        // One cargo invocation for the three native artifacts: one feature resolution, so the
        // dependencies they share compile once.
        step(
            "release build (server, C library, napi addon)",
            cargo().args([
                "build",
                "--release",
                "-p",
                "longrun-cli",
                "-p",
                "longrun-c",
                "-p",
                "longrun-node",
            ]),
        )?;
        target_dir().join("release")
    } else {
        // The very invocations of go.rs and js.rs, so these are the builds their suites made.
        step(
            "C library and server (debug, as the Go suite builds them)",
            cargo().args(["build", "-p", "longrun-c", "-p", "longrun-cli"]),
        )?;
        step(
            "napi addon (debug, as the JS suite builds it)",
            cargo().args(["build", "-p", "longrun-node"]),
        )?;
        target_dir().join("debug")
    };
    let server = server_tarball(&version, &built)?;
    let go = go_module(&version, &built)?;
    let (npm_main, npm_platform) = npm_packages(&version, &built, checks == Checks::Full)?;
    let wheel = python(&version)?;
    crates(checks)?;
    checksums()?;
    eprintln!("\n==> dist: everything is in {}", dist.display());
    Ok(Artifacts {
        version,
        server,
        wheel,
        npm_main,
        npm_platform,
        go,
    })
}

/// `tar -czf OUT -C DIR NAME`: an archive whose one top directory is NAME.
fn tar(out: &Path, dir: &Path, name: &str) -> Result<(), String> {
    step(
        &format!("archive {name}"),
        Command::new("tar")
            .arg("--owner=0")
            .arg("--group=0")
            .arg("-czf")
            .arg(out)
            .arg("-C")
            .arg(dir)
            .arg(name),
    )
}

/// The newest `GLIBC_2.N` symbol version an ELF file asks for (what `objdump -T` lists), as
/// `(2, N)`: the oldest glibc it runs on.
pub fn glibc_needed(binary: &Path) -> Result<(u32, u32), String> {
    let bytes = io(binary.display(), std::fs::read(binary))?;
    let mut newest = None;
    for (i, _) in bytes
        .windows(8)
        .enumerate()
        .filter(|(_, w)| w == b"GLIBC_2.")
    {
        let digits = |from: usize| {
            let n: Vec<u8> = bytes[from..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .copied()
                .collect();
            (
                String::from_utf8_lossy(&n).parse::<u32>().ok(),
                from + n.len(),
            )
        };
        if let (Some(minor), _) = digits(i + 8) {
            newest = newest.max(Some((2, minor)));
        }
    }
    newest.ok_or_else(|| format!("{}: no GLIBC_2.* symbol versions", binary.display()))
}

fn server_tarball(version: &str, built: &Path) -> Result<PathBuf, String> {
    let name = format!("longrun-{version}-{TRIPLE}");
    let dir = stage_dir().join(&name);
    fresh_dir(&dir)?;
    copy(&built.join("longrun"), &dir.join("longrun"))?;
    copy(&root().join("README.md"), &dir.join("README.md"))?;
    let (major, minor) = glibc_needed(&dir.join("longrun"))?;
    eprintln!("\n==> server binary needs glibc >= {major}.{minor}");
    let out = dist_dir().join(format!("{name}.tar.gz"));
    tar(&out, &stage_dir(), &name)?;
    Ok(out)
}

/// The Go module as a user gets it: its sources (not its tests, which need this checkout),
/// the header in `include/` and the static library in `lib/` (cgo.go names both).
fn go_module(version: &str, built: &Path) -> Result<PathBuf, String> {
    let name = format!("longrun-go-{version}");
    let dir = stage_dir().join(&name);
    fresh_dir(&dir)?;
    let go = root().join("go");
    for entry in io("go/", std::fs::read_dir(&go))? {
        let path = io("go/", entry)?.path();
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        let wanted = (file.ends_with(".go") && !file.ends_with("_test.go"))
            || file == "go.mod"
            || file == "go.sum"
            || file == "README.md";
        if wanted && path.is_file() {
            copy(&path, &dir.join(&*file))?;
        }
    }
    for sub in ["include", "lib"] {
        io(sub, std::fs::create_dir_all(dir.join(sub)))?;
    }
    copy(
        &root().join("bindings/c/include/longrun.h"),
        &dir.join("include/longrun.h"),
    )?;
    copy(
        &built.join("liblongrun_c.a"),
        &dir.join("lib/liblongrun_c.a"),
    )?;
    let out = dist_dir().join(format!("{name}.tar.gz"));
    tar(&out, &stage_dir(), &name)?;
    Ok(out)
}

/// `npm pack` of the main package (js/ with the release wasm build, package.json given the
/// platform packages as `optionalDependencies`, as `napi prepublish` does) and of the
/// per-platform package holding the addon.
fn npm_packages(version: &str, built: &Path, release: bool) -> Result<(PathBuf, PathBuf), String> {
    crate::js::ensure_node_modules()?;
    let main = stage_dir().join("npm/longrun");
    fresh_dir(&main)?;
    crate::js::wasm(release, &main.join("wasm"))?;
    let js = root().join("js");
    step(
        "stage js/src",
        Command::new("cp").arg("-r").arg(js.join("src")).arg(&main),
    )?;
    copy(&js.join("README.md"), &main.join("README.md"))?;
    let platform_package = format!("longrun-{NPM_PLATFORM}");
    // node edits the manifest: it is JSON, and xtask has no JSON parser.
    step(
        "npm manifest",
        Command::new("node")
            .arg("-e")
            .arg(
                r#"const fs = require("fs");
const [from, to, platform, version] = process.argv.slice(1);
const p = JSON.parse(fs.readFileSync(from, "utf8"));
delete p.devDependencies; delete p.scripts;
p.files = ["src", "wasm"];
p.optionalDependencies = { [platform]: version };
fs.writeFileSync(to, JSON.stringify(p, null, 2) + "\n");"#,
            )
            .arg(js.join("package.json"))
            .arg(main.join("package.json"))
            .arg(&platform_package)
            .arg(version),
    )?;

    let platform = stage_dir().join("npm").join(&platform_package);
    fresh_dir(&platform)?;
    let addon = format!("longrun.{NPM_PLATFORM}.node");
    copy(&built.join("liblongrun_node.so"), &platform.join(&addon))?;
    let manifest = format!(
        r#"{{
  "name": "{platform_package}",
  "version": "{version}",
  "description": "The {NPM_PLATFORM} napi addon of the `longrun` package (installed by it; do not depend on it directly).",
  "license": "MIT OR Apache-2.0",
  "os": ["linux"],
  "cpu": ["x64"],
  "libc": ["glibc"],
  "main": "{addon}",
  "files": ["{addon}"],
  "engines": {{ "node": ">=20" }}
}}
"#
    );
    io(
        "platform package.json",
        std::fs::write(platform.join("package.json"), manifest),
    )?;
    io(
        "platform README.md",
        std::fs::write(
            platform.join("README.md"),
            format!(
                "# {platform_package}\n\nThe prebuilt Node addon of [`longrun`](https://www.npmjs.com/package/longrun) \
                 for Linux x86_64 with glibc. `npm install longrun` installs it when it fits the machine.\n"
            ),
        ),
    )?;
    for dir in [&main, &platform] {
        step_in(
            dir,
            "npm pack",
            Command::new("npm")
                .args(["pack", "--quiet", "--pack-destination"])
                .arg(dist_dir()),
        )?;
    }
    Ok((
        dist_dir().join(format!("longrun-{version}.tgz")),
        dist_dir().join(format!("{platform_package}-{version}.tgz")),
    ))
}

/// The sdist (`maturin sdist`), then the wheel built from it by pip through maturin's PEP 517
/// backend, with zig as the linker for the manylinux2014 (glibc 2.17) baseline; `auditwheel
/// show` must agree with the tag.
fn python(version: &str) -> Result<PathBuf, String> {
    let python = crate::python::python3().ok_or("python3 is needed to build the wheel")?;
    let venv = root().join("target/dist-venv");
    crate::python::venv(&python, &venv, PY_TOOLS)?;
    let bin = |tool: &str| crate::python::bin(&venv, tool);
    let dist = dist_dir();
    step_in(
        &root().join("python"),
        "python sdist",
        Command::new(bin("maturin"))
            .args(["sdist", "-o"])
            .arg(&dist),
    )?;
    let sdist = dist.join(format!("longrun-{version}.tar.gz"));
    // maturin looks for zig as `python -m ziglang` with the python on PATH: the venv's.
    let path = std::env::join_paths(std::iter::once(venv.join("bin")).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .map_err(|e| format!("PATH: {e}"))?;
    step(
        "python wheel (from the sdist)",
        Command::new(bin("pip"))
            .args([
                "wheel",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "-w",
            ])
            .arg(&dist)
            .arg(&sdist)
            .env("PATH", path)
            // The unpacked sdist's own target/ would rebuild every dependency.
            .env("CARGO_TARGET_DIR", target_dir())
            .env(
                "MATURIN_PEP517_ARGS",
                format!("--zig --compatibility {MANYLINUX} --target {TRIPLE}"),
            ),
    )?;
    let wheel = std::fs::read_dir(&dist)
        .map_err(|e| format!("{}: {e}", dist.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or("pip built no wheel from the sdist")?;
    let shown = Command::new(bin("auditwheel"))
        .arg("show")
        .arg(&wheel)
        .output()
        .map_err(|e| format!("auditwheel: {e}"))?;
    let text = String::from_utf8_lossy(&shown.stdout).replace('\n', " ");
    eprintln!("\n==> auditwheel show: {text}");
    if !shown.status.success() || !text.contains("manylinux_2_17_x86_64") {
        return Err(format!(
            "auditwheel does not accept {} as manylinux_2_17: {text}{}",
            wheel.display(),
            String::from_utf8_lossy(&shown.stderr)
        ));
    }
    Ok(wheel)
}

/// `cargo package` of the published crates in one invocation, so that each one's unpublished
/// siblings resolve to the `.crate` files packaged beside it.
fn crates(checks: Checks) -> Result<(), String> {
    let mut cmd = cargo();
    cmd.arg("package").arg("--allow-dirty");
    for name in CRATES {
        cmd.args(["-p", name]);
    }
    if checks == Checks::Quick {
        cmd.arg("--no-verify");
    }
    step("cargo package", &mut cmd)?;
    let out = dist_dir().join("crates");
    fresh_dir(&out)?;
    let version = versions()?;
    for name in CRATES {
        let file = format!("{name}-{version}.crate");
        copy(&target_dir().join("package").join(&file), &out.join(&file))?;
    }
    Ok(())
}

/// `SHA256SUMS` (what `sha256sum -c` reads) over every file in `target/dist`.
fn checksums() -> Result<(), String> {
    let dist = dist_dir();
    let mut files = Vec::new();
    for entry in io(dist.display(), std::fs::read_dir(&dist))? {
        let path = io(dist.display(), entry)?.path();
        if path.is_dir() {
            for inner in io(path.display(), std::fs::read_dir(&path))? {
                files.push(io(path.display(), inner)?.path());
            }
        } else {
            files.push(path);
        }
    }
    let mut names: Vec<String> = files
        .iter()
        .filter_map(|p| Some(p.strip_prefix(&dist).ok()?.display().to_string()))
        .filter(|n| n != "SHA256SUMS")
        .collect();
    names.sort();
    let out = Command::new("sha256sum")
        .args(&names)
        .current_dir(&dist)
        .output()
        .map_err(|e| format!("sha256sum: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "sha256sum failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    io(
        "SHA256SUMS",
        std::fs::write(dist.join("SHA256SUMS"), &out.stdout),
    )?;
    eprintln!("\n==> target/dist:");
    for name in &names {
        let size = std::fs::metadata(dist.join(name)).map_or(0, |m| m.len());
        eprintln!("    {:>12} {name}", size);
    }
    Ok(())
}

/// `cargo xtask dist [--quick]`, or `cargo xtask dist test`: the install suite alone.
pub fn run(args: &[String]) -> Result<(), String> {
    if args.first().is_some_and(|a| a == "test") {
        let (passed, failed) = crate::install_test::test()?;
        println!("tests: {passed} passed, {failed} failed");
        return Ok(());
    }
    let checks = if args.iter().any(|a| a == "--quick") {
        Checks::Quick
    } else {
        Checks::Full
    };
    build(checks).map(drop)
}

#[cfg(test)]
mod tests {
    /// Every package carries the workspace's version (`cargo test` catches a drift).
    #[test]
    fn every_package_has_the_workspace_version() {
        super::versions().unwrap();
    }

    #[test]
    fn reads_toml_and_json_fields() {
        let toml = "[package]\nname = \"x\"\n[project]\nversion = \"1.2.3\"\n";
        assert_eq!(super::field(toml, "[project]", "version").unwrap(), "1.2.3");
        let json = "{\n  \"name\": \"longrun\",\n  \"version\": \"0.1.0\",\n";
        assert_eq!(super::field(json, "", "version").unwrap(), "0.1.0");
    }
}
