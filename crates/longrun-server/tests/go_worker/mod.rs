//! The Go example worker (`examples/worker-go`) for `tests/worker_go.rs` and
//! `benches/workers.rs`: built with `go build`, started as a child process registered with a
//! server. (A directory without `main.rs`, so cargo does not take it for a test of its own.)
#![allow(dead_code)] // the test and the bench each use their own part

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// `go build` the worker into cargo's temporary directory as `name`, with extra `flags`;
/// `None` when `go` is not installed. A failing build panics.
pub fn build(name: &str, flags: &[&str]) -> Option<PathBuf> {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/worker-go");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let status = std::process::Command::new("go")
        .arg("build")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(".")
        .current_dir(&source)
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .status();
    match status {
        Ok(s) => {
            assert!(s.success(), "go build in {} failed: {s}", source.display());
            Some(out)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("cannot run go: {e}"),
    }
}

/// Say loudly that `what` did not run for want of `go`: straight to stderr, past the test
/// harness's capture of `eprintln!`.
pub fn skip(what: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "\n    ******** SKIP: go not found; {what} did NOT run ********\n"
    );
}

/// The worker process, registered with a server; killed when dropped.
pub struct GoWorker {
    _child: Child,
    pub port: u16,
    pub id: String,
    _stdout: Lines<BufReader<ChildStdout>>,
}

impl GoWorker {
    /// Start `binary` registering with the server at `server` (a base URL), and wait for its
    /// `listening on PORT` and `registered NODE_ID` lines.
    pub async fn start(binary: &Path, server: &str) -> GoWorker {
        let mut child = Command::new(binary)
            .arg("--server")
            .arg(server)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the worker starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut line = async |prefix: &str| {
            let line = stdout.next_line().await.unwrap().expect("a line");
            line.strip_prefix(prefix)
                .unwrap_or_else(|| panic!("expected {prefix:?}…, got {line:?}"))
                .to_owned()
        };
        let port = line("listening on ").await.parse().expect("a port");
        let id = line("registered ").await;
        GoWorker {
            _child: child,
            port,
            id,
            _stdout: stdout,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}
