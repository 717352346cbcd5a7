//! `longrun serve --listen unix:PATH` and the client subcommands with `--server unix:///PATH`:
//! the real binary, a TCP and a unix listener in one process, the socket's mode, the
//! stale-socket rule, the socket file removed at the end. Tests wait for what the child
//! prints, never for time.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// `longrun ARGS` with no `LONGRUN_*` variable from the environment.
fn longrun(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_longrun"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("LONGRUN_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("LONGRUN_STORE", "memory")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A running `longrun serve` and the addresses it printed, one per listener.
struct Serve {
    child: Child,
    addresses: Vec<String>,
}

impl Serve {
    fn start(args: &[&str], listeners: usize) -> Serve {
        let mut child = longrun(&[&["serve"], args].concat()).spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut addresses = Vec::new();
        for _ in 0..listeners {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            let address = line
                .trim_end()
                .strip_prefix("longrun listening on ")
                .unwrap_or_else(|| panic!("no address line but {line:?}"));
            addresses.push(address.to_owned());
        }
        Serve { child, addresses }
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        self.child.wait().unwrap()
    }
}

#[track_caller]
fn ok(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}; stderr: {stderr}", out.status);
    String::from_utf8(out.stdout).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn serve_on_tcp_and_a_unix_socket_and_submit_over_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("longrun.sock");
    let listen = format!("unix:{}", socket.display());
    let serve = Serve::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--listen",
            &listen,
            "--socket-mode",
            "0600",
        ],
        2,
    );
    assert!(
        serve.addresses[0].starts_with("http://127.0.0.1:"),
        "{:?}",
        serve.addresses
    );
    let base = format!("unix://{}", socket.display());
    assert_eq!(serve.addresses[1], base);
    assert_eq!(mode(&socket), 0o600);

    // Submit and wait over the socket.
    let value = ok(
        longrun(&["submit", "echo", "a=1", "--wait", "--server", &base])
            .output()
            .unwrap(),
    );
    assert_eq!(value, "{\"a\":\"1\"}\n");

    // The run URL submit prints is on the socket; follow, exists and cancel take it.
    let url = ok(
        longrun(&["submit", "sleep", "ms:=60000", "--server", &base])
            .output()
            .unwrap(),
    );
    let url = url.trim_end();
    assert!(url.starts_with(&format!("{base}/sleep/")), "{url}");
    ok(longrun(&["exists", url]).output().unwrap());
    ok(longrun(&["cancel", url]).output().unwrap());
    let canceled = longrun(&["wait", url]).output().unwrap();
    assert_eq!(canceled.status.code(), Some(3), "{canceled:?}");
    // A run path resolves against --server.
    let path = &url[base.len()..];
    let followed = longrun(&["follow", path, "--server", &base])
        .output()
        .unwrap();
    assert_eq!(followed.status.code(), Some(3), "{followed:?}");
    let stdout = String::from_utf8(followed.stdout).unwrap();
    assert!(stdout.contains("canceled"), "{stdout}");

    // A second server on the same socket: refused, and the first one's file stays.
    let second = longrun(&["serve", "--listen", &listen]).output().unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another server is listening"), "{stderr}");
    assert!(socket.exists());

    assert!(serve.stop().success());
    assert!(
        !socket.exists(),
        "the server removes its socket when it stops"
    );
}

#[test]
fn a_stale_socket_file_is_replaced_and_the_default_mode_is_0660() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("stale.sock");
    // A server that died left its file: nothing listens on it.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let listen = format!("unix:{}", socket.display());
    let serve = Serve::start(&["--listen", &listen], 1);
    assert_eq!(mode(&socket), 0o660);
    let base = &serve.addresses[0];
    let value = ok(
        longrun(&["submit", "count", "n:=2", "--wait", "--server", base])
            .output()
            .unwrap(),
    );
    assert_eq!(value, "{\"n\":2}\n");
    assert!(serve.stop().success());
}

#[test]
fn a_bad_socket_mode_is_a_usage_error() {
    let out = longrun(&[
        "serve",
        "--listen",
        "unix:/nonexistent/l.sock",
        "--socket-mode",
        "999",
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("octal"), "{stderr}");
}
