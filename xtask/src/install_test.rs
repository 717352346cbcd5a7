//! The install suite of `cargo xtask test`: build `target/dist` (`dist.rs`), copy it into a
//! fresh directory outside the checkout, and install each artifact the way a user would, with
//! a PATH that has no `cargo` or `rustc` and no cargo/rustup variables: the server from its
//! tarball, the wheel into a fresh venv (`pip install --no-index`), the npm tarballs into a
//! fresh project (`npm install --offline`), the Go module (unpacked) from a fresh module by a
//! `replace` with `GOPROXY=off`. Then each SDK runs its quickstart from README.md against the
//! packaged server. An artifact that needs this checkout, a toolchain or the network fails here.
//!
//! A missing python3, node/npm or go is an error with `CI=true`, a loud SKIP of that part
//! elsewhere (as in the other suites).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::dist::{self, Artifacts};
use crate::{ci, root};

/// A tool a part of the suite cannot do without: `Ok(false)` (skip, said loudly) on a dev
/// machine, an error with `CI=true`.
fn available(tool: &str, part: &str) -> Result<bool, String> {
    let found = Command::new(tool)
        .arg(if tool == "go" { "version" } else { "--version" })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Ok(true);
    }
    if ci() {
        return Err(format!(
            "install suite: `{tool}` is needed for {part} (CI=true)"
        ));
    }
    eprintln!("\n!!!!!!!! SKIP install suite, {part}: `{tool}` is not installed !!!!!!!!\n");
    Ok(false)
}

/// PATH without every directory that holds `cargo` or `rustc` (~/.cargo/bin, a system Rust).
fn path_without_rust() -> Result<std::ffi::OsString, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let kept = std::env::split_paths(&path)
        .filter(|dir| !dir.join("cargo").exists() && !dir.join("rustc").exists());
    std::env::join_paths(kept).map_err(|e| format!("PATH: {e}"))
}

/// A clean environment: that PATH, no cargo or rustup variables, the work directory `dir`.
struct Clean {
    path: std::ffi::OsString,
}

impl Clean {
    fn new() -> Result<Self, String> {
        let clean = Clean {
            path: path_without_rust()?,
        };
        // The proof that the PATH is clean: neither tool can be found.
        for tool in ["cargo", "rustc"] {
            let found = clean
                .cmd("sh", &std::env::temp_dir())
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .map_err(|e| format!("sh: {e}"))?;
            if found.success() {
                return Err(format!(
                    "install suite: `{tool}` is still on the cleaned PATH"
                ));
            }
        }
        Ok(clean)
    }

    fn cmd(&self, program: impl AsRef<std::ffi::OsStr>, dir: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(dir).env("PATH", &self.path);
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().into_owned();
            if name.starts_with("CARGO") || name.starts_with("RUSTUP") || name.starts_with("RUSTC")
            {
                cmd.env_remove(name);
            }
        }
        cmd
    }
}

fn run(name: &str, cmd: &mut Command) -> Result<String, String> {
    // Not `{cmd:?}`: it would list every variable the clean environment removes.
    let args: Vec<_> = cmd.get_args().collect();
    eprintln!("\n==> install: {name}: {:?} {args:?}", cmd.get_program());
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{name}: cannot start {:?}: {e}", cmd.get_program()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{stdout}");
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("install: {name} failed ({})", out.status))
    }
}

/// The packaged server, listening on a free loopback port; killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(clean: &Clean, binary: &Path, dir: &Path) -> Result<Server, String> {
    let mut child = clean
        .cmd(binary, dir)
        .args(["serve", "--store", "memory", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the packaged server: {e}"))?;
    let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
    let url = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| Some(l.strip_prefix("longrun listening on ")?.trim().to_owned()));
    // Keep reading, so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    match url {
        Some(url) => Ok(Server { child, url }),
        None => Err("the packaged server exited before listening".into()),
    }
}

/// The first ```LANG block after the heading `## SECTION` of README.md, with the server URL
/// put where the README says http://127.0.0.1:8080.
fn quickstart(section: &str, lang: &str, url: &str) -> Result<String, String> {
    let readme =
        std::fs::read_to_string(root().join("README.md")).map_err(|e| format!("README.md: {e}"))?;
    let heading = format!("## {section}");
    let after = readme
        .split_once(&format!("\n{heading}\n"))
        .ok_or_else(|| format!("README.md has no `{heading}`"))?
        .1;
    let section_text = after.split("\n## ").next().unwrap_or(after);
    let code = section_text
        .split_once(&format!("```{lang}\n"))
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(code, _)| code)
        .ok_or_else(|| format!("README.md `{heading}` has no ```{lang} block"))?;
    Ok(code.replace("http://127.0.0.1:8080", url) + "\n")
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn mkdir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

/// The quickstart's output must show the run ending in success.
fn expect_success(name: &str, output: &str) -> Result<(), String> {
    if output.contains("success") {
        Ok(())
    } else {
        Err(format!(
            "install: {name}: the quickstart printed no `success` event"
        ))
    }
}

fn python(clean: &Clean, a: &Artifacts, work: &Path, url: &str) -> Result<u64, String> {
    if !available("python3", "the Python wheel")? {
        return Ok(0);
    }
    let venv = work.join("venv");
    run(
        "python venv",
        clean.cmd("python3", work).arg("-m").arg("venv").arg(&venv),
    )?;
    run(
        "pip install the wheel",
        clean
            .cmd(venv.join("bin/pip"), work)
            .args(["install", "--quiet", "--no-index"])
            .arg(&a.wheel),
    )?;
    let script = work.join("quickstart.py");
    write(&script, &quickstart("Python", "python", url)?)?;
    let out = run(
        "python quickstart",
        clean.cmd(venv.join("bin/python"), work).arg(&script),
    )?;
    expect_success("python", &out)?;
    Ok(1)
}

fn npm(clean: &Clean, a: &Artifacts, work: &Path, url: &str) -> Result<u64, String> {
    if !available("node", "the npm packages")? || !available("npm", "the npm packages")? {
        return Ok(0);
    }
    let project = work.join("npm-project");
    mkdir(&project)?;
    write(
        &project.join("package.json"),
        "{ \"name\": \"quickstart\", \"private\": true, \"type\": \"module\" }\n",
    )?;
    run(
        "npm install the tarballs",
        clean
            .cmd("npm", &project)
            .args([
                "install",
                "--offline",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ])
            .arg(&a.npm_main)
            .arg(&a.npm_platform),
    )?;
    write(
        &project.join("quickstart.mjs"),
        &quickstart("JavaScript (Node and browsers)", "js", url)?,
    )?;
    let out = run(
        "node quickstart (napi addon)",
        clean.cmd("node", &project).arg("quickstart.mjs"),
    )?;
    expect_success("node", &out)?;
    // The wasm build in the same package, in Node.
    let wasm = format!(
        "import {{ Client }} from \"longrun/wasm\";\n\
         const c = new Client({url:?});\n\
         const run = await c.submit(\"count\", {{ n: 2 }});\n\
         console.log(JSON.stringify(await c.wait(run, {{ timeoutMs: 10000 }})));\n"
    );
    write(&project.join("wasm.mjs"), &wasm)?;
    let out = run(
        "node wasm build",
        clean.cmd("node", &project).arg("wasm.mjs"),
    )?;
    if !out.contains("\"n\":2") {
        return Err(format!("install: the wasm build answered {out:?}"));
    }
    // Without the platform package, the loader must say which package is missing.
    let platform = project.join(format!("node_modules/longrun-{}", dist::NPM_PLATFORM));
    std::fs::remove_dir_all(&platform).map_err(|e| format!("{}: {e}", platform.display()))?;
    let out = clean
        .cmd("node", &project)
        .args(["-e", "import('longrun').then(() => console.log('loaded'))"])
        .output()
        .map_err(|e| format!("node: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let named = format!(
        "the package longrun-{} is not installed",
        dist::NPM_PLATFORM
    );
    if out.status.success() || !stderr.contains(&named) {
        return Err(format!(
            "install: without the platform package, `import(\"longrun\")` should fail saying \
             {named:?}; it said: {stderr}"
        ));
    }
    eprintln!("\n==> install: without the platform package the loader says: {named}");
    Ok(3)
}

fn go(clean: &Clean, a: &Artifacts, work: &Path, url: &str) -> Result<u64, String> {
    if !available("go", "the Go module")? {
        return Ok(0);
    }
    let unpacked = work.join("go-module");
    mkdir(&unpacked)?;
    run(
        "unpack the Go module",
        clean
            .cmd("tar", work)
            .arg("-xzf")
            .arg(&a.go)
            .arg("-C")
            .arg(&unpacked),
    )?;
    let module = unpacked.join(format!("longrun-go-{}", a.version));
    let app = work.join("go-app");
    mkdir(&app)?;
    write(
        &app.join("go.mod"),
        &format!(
            "module quickstart\n\ngo 1.23\n\nrequire {GO_MODULE} v{v}\n\nreplace {GO_MODULE} => {}\n",
            module.display(),
            v = a.version,
        ),
    )?;
    write(&app.join("main.go"), &quickstart("Go", "go", url)?)?;
    let out = run(
        "go run the quickstart",
        clean
            .cmd("go", &app)
            .args(["run", "."])
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("GOFLAGS", "-mod=mod")
            .env("GOWORK", "off")
            .env("CGO_ENABLED", "1"),
    )?;
    expect_success("go", &out)?;
    Ok(1)
}

/// The Go module's path (go/go.mod).
const GO_MODULE: &str = "example.invalid/longrun/go";

/// The suite; `(passed, failed)` for the totals (one per quickstart and check that ran).
pub fn test() -> Result<(u64, u64), String> {
    let artifacts = dist::build(dist::Checks::Quick)?;
    let work = std::env::temp_dir().join(format!("longrun-install-{}", std::process::id()));
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    }
    mkdir(&work)?;
    let result = suite(&artifacts, &work);
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!("install suite: its files are kept in {}", work.display());
    }
    result
}

fn suite(built: &Artifacts, work: &Path) -> Result<(u64, u64), String> {
    // The artifacts are copied out of the checkout first: nothing may point back into it.
    let copied = work.join("artifacts");
    mkdir(&copied)?;
    let copy = |p: &Path| -> Result<PathBuf, String> {
        let to = copied.join(p.file_name().unwrap_or_default());
        std::fs::copy(p, &to).map_err(|e| format!("copying {}: {e}", p.display()))?;
        Ok(to)
    };
    let a = Artifacts {
        version: built.version.clone(),
        server: copy(&built.server)?,
        wheel: copy(&built.wheel)?,
        npm_main: copy(&built.npm_main)?,
        npm_platform: copy(&built.npm_platform)?,
        go: copy(&built.go)?,
    };
    let clean = Clean::new()?;
    run(
        "unpack the server",
        clean.cmd("tar", work).arg("-xzf").arg(&a.server),
    )?;
    let binary = work
        .join(format!("longrun-{}-{}", a.version, dist::TRIPLE))
        .join("longrun");
    run(
        "longrun --version",
        clean.cmd(&binary, work).arg("--version"),
    )?;
    let server = start_server(&clean, &binary, work)?;
    eprintln!(
        "\n==> install: the packaged server listens on {}",
        server.url
    );
    let mut passed = 1;
    passed += python(&clean, &a, work, &server.url)?;
    passed += npm(&clean, &a, work, &server.url)?;
    passed += go(&clean, &a, work, &server.url)?;
    println!("install suite result: {passed} passed; 0 failed");
    Ok((passed, 0))
}
