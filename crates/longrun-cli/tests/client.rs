//! The client subcommands as a user runs them: the real `longrun` binary as a child process,
//! talking to an in-process server with the demo objects on an ephemeral loopback port. Each
//! test asserts what the user sees: stdout, stderr and the exit code. Tests wait for what the
//! child prints, never for time.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::OnceLock;

use serde_json::{Value, json};

/// A run id no server has.
const UNKNOWN_ID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

/// The base URL of one server shared by every test of this binary; it lives as long as the
/// test process (each test works on runs of its own).
fn server() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| spawn_server(longrun_server::Server::builder))
}

/// A demo server (from `builder`, plus the demo objects) on a thread of its own; its base URL.
fn spawn_server(
    builder: impl FnOnce() -> longrun_server::ServerBuilder + Send + 'static,
) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let server = builder()
                .demo()
                .build()
                .expect("the demo objects have unique names");
            longrun_server::serve(listener, server, std::future::pending()).await
        })
    });
    base
}

/// `longrun ARGS` against the shared server (by LONGRUN_SERVER), with no other `LONGRUN_*`
/// variable from the environment and stdin closed (so: not a terminal).
fn longrun(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_longrun"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("LONGRUN_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("LONGRUN_SERVER", server())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[derive(Debug)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn of(output: std::process::Output) -> Ran {
        Ran {
            code: output
                .status
                .code()
                .expect("the CLI exits, it is not killed"),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }

    #[track_caller]
    fn expect(self, code: i32) -> Ran {
        assert_eq!(self.code, code, "{self:#?}");
        self
    }

    /// stdout as JSON.
    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {self:#?}"))
    }

    /// stdout as `ID STATE VALUE` lines.
    #[track_caller]
    fn events(&self) -> Vec<(u64, String, Value)> {
        self.stdout
            .lines()
            .map(|line| {
                let mut parts = line.splitn(3, ' ');
                let (Some(id), Some(state), Some(value)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    panic!("not an event line: {line:?}");
                };
                (
                    id.parse().unwrap(),
                    state.to_owned(),
                    serde_json::from_str(value).unwrap(),
                )
            })
            .collect()
    }
}

fn run(args: &[&str]) -> Ran {
    Ran::of(longrun(args).output().unwrap())
}

/// `longrun submit ARGS`; the run URL it printed.
fn submit(args: &[&str]) -> String {
    let ran = run(&[&["submit"], args].concat()).expect(0);
    assert_eq!(ran.stderr, "");
    ran.stdout.trim_end().to_owned()
}

/// The states of `ID STATE VALUE` lines.
fn states(events: &[(u64, String, Value)]) -> Vec<&str> {
    events.iter().map(|(_, state, _)| state.as_str()).collect()
}

/// A loopback URL where nothing listens.
fn dead_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

/// A `longrun` child the test talks to while it runs.
struct Running {
    child: Child,
    stdout: BufReader<ChildStdout>,
    stderr: BufReader<ChildStderr>,
    /// What the test has read so far, so the final [`Ran`] holds all of it.
    seen: Ran,
}

impl Running {
    fn spawn(args: &[&str]) -> Running {
        let mut child = longrun(args).spawn().unwrap();
        Running {
            stdout: BufReader::new(child.stdout.take().unwrap()),
            stderr: BufReader::new(child.stderr.take().unwrap()),
            child,
            seen: Ran {
                code: 0,
                stdout: String::new(),
                stderr: String::new(),
            },
        }
    }

    /// Wait for the child's next line on stdout.
    fn stdout_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        self.seen.stdout.push_str(&line);
        line
    }

    /// Wait for the `longrun: run URL` line on stderr (printed once Ctrl-C is handled).
    fn run_url(&mut self) -> String {
        let mut line = String::new();
        self.stderr.read_line(&mut line).unwrap();
        self.seen.stderr.push_str(&line);
        line.trim_end()
            .strip_prefix("longrun: run ")
            .unwrap_or_else(|| panic!("no run line but {line:?}"))
            .to_owned()
    }

    /// Send SIGINT, as Ctrl-C does, to the child only.
    fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Wait for the child to exit; everything it printed, and its exit code.
    fn finish(mut self) -> Ran {
        self.stdout.read_to_string(&mut self.seen.stdout).unwrap();
        self.stderr.read_to_string(&mut self.seen.stderr).unwrap();
        let status = self.child.wait().unwrap();
        self.seen.code = status.code().expect("the CLI exits, it is not killed");
        self.seen
    }
}

#[test]
fn help_lists_the_subcommands_and_the_exit_codes() {
    let help = run(&["--help"]).expect(0).stdout;
    for command in [
        "serve", "submit", "follow", "wait", "cancel", "exists", "stream", "objects",
    ] {
        assert!(
            help.contains(&format!("\n  {command} ")),
            "{command}: {help}"
        );
    }
    let help = run(&["submit", "--help"]).expect(0).stdout;
    assert!(help.contains("key:=json"), "{help}");
    assert!(help.contains("Exit codes:"), "{help}");
    for code in ["0", "1", "2", "3", "4", "5", "6", "130"] {
        assert!(
            help.contains(&format!("\n  {code} ")),
            "exit code {code}: {help}"
        );
    }
}

#[test]
fn submit_prints_the_run_url() {
    let url = submit(&["echo"]);
    let id = url
        .strip_prefix(&format!("{}/echo/", server()))
        .unwrap_or_else(|| panic!("not a run URL of the server: {url}"));
    assert_eq!(id.len(), 36, "{url}");
    assert_eq!(run(&["wait", &url]).expect(0).json(), json!({}));

    let ran = run(&["--json", "submit", "echo"]).expect(0);
    let submitted = ran.json();
    assert_eq!(submitted["object"], "echo");
    let url = submitted["url"].as_str().unwrap();
    assert!(
        url.ends_with(submitted["id"].as_str().unwrap()),
        "{submitted}"
    );
    assert_eq!(run(&["wait", url]).expect(0).json(), json!({}));
}

#[test]
fn submit_takes_items_of_every_form() {
    let ran = run(&[
        "submit",
        "echo",
        "name=Ada",
        "digits=42",
        "empty=",
        "n:=3",
        "xs:=[1,2]",
        "o:={\"a\":null}",
        "flag:=true",
        "quoted:=\"text\"",
        "--wait",
    ])
    .expect(0);
    assert_eq!(
        ran.json(),
        json!({"name": "Ada", "digits": "42", "empty": "", "n": 3, "xs": [1, 2],
               "o": {"a": null}, "flag": true, "quoted": "text"})
    );
    assert!(
        ran.stderr
            .starts_with(&format!("longrun: run {}/echo/", server())),
        "{ran:#?}"
    );
}

#[test]
fn items_override_the_members_of_args() {
    let ran = run(&[
        "submit",
        "echo",
        "--args",
        r#"{"n": 1, "keep": true}"#,
        "n:=2",
        "--wait",
    ])
    .expect(0);
    assert_eq!(ran.json(), json!({"n": 2, "keep": true}));
}

#[test]
fn args_come_from_a_file_or_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("args.json");
    std::fs::write(&path, r#"{"from": "file", "n": [1]}"#).unwrap();
    let at_path = format!("@{}", path.display());
    let ran = run(&["submit", "echo", "--args", &at_path, "--wait"]).expect(0);
    assert_eq!(ran.json(), json!({"from": "file", "n": [1]}));

    let mut child = longrun(&["submit", "echo", "--args", "@-", "extra=1", "--wait"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"from": "stdin"}"#)
        .unwrap();
    let ran = Ran::of(child.wait_with_output().unwrap()).expect(0);
    assert_eq!(ran.json(), json!({"from": "stdin", "extra": "1"}));
}

#[test]
fn bad_arguments_are_usage_errors() {
    let ran = run(&["submit", "echo", "n:=abc"]).expect(2);
    assert_eq!(ran.stdout, "");
    assert!(ran.stderr.contains("n:=abc"), "{ran:#?}");
    assert!(ran.stderr.contains("not JSON"), "{ran:#?}");

    let ran = run(&["submit", "echo", "novalue"]).expect(2);
    assert!(ran.stderr.contains("key=value"), "{ran:#?}");

    let ran = run(&["submit", "echo", "--args", "[1]"]).expect(2);
    assert!(ran.stderr.contains("must be a JSON object"), "{ran:#?}");

    let ran = run(&["submit", "echo", "--args", "@/nonexistent/args.json"]).expect(2);
    assert!(ran.stderr.contains("cannot read the file"), "{ran:#?}");

    let ran = run(&["submit", "echo", "n:=1", "n:=2"]).expect(2);
    assert!(ran.stderr.contains("n is given twice"), "{ran:#?}");

    // The server refuses them (422): still the caller's to fix.
    let ran = run(&["submit", "count", "n:=-1"]).expect(2);
    assert_eq!(ran.stdout, "");
    assert!(
        ran.stderr
            .contains("`longrun objects count` prints its schema"),
        "{ran:#?}"
    );

    let ran = run(&["wait", "not-a-url"]).expect(2);
    assert!(ran.stderr.contains("http://HOST/OBJECT/ID"), "{ran:#?}");

    run(&["submit", "echo", "--follow", "--wait"]).expect(2);
    run(&["submit", "echo", "--cancel-on-interrupt"]).expect(2);
}

#[test]
fn objects_lists_the_catalogue_and_prints_one_schema() {
    let ran = run(&["objects"]).expect(0);
    let mut lines = ran.stdout.lines();
    let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(head, ["NAME", "KIND", "DESCRIPTION"], "{ran:#?}");
    let count = lines
        .find(|l| l.starts_with("count "))
        .unwrap_or_else(|| panic!("{ran:#?}"));
    assert!(
        count.contains("builtin") && count.contains("running events"),
        "{count}"
    );

    let listed = run(&["objects", "--json"]).expect(0).json();
    assert!(
        listed["objects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["name"] == "_compose")
    );

    let schema = run(&["objects", "count"]).expect(0).json();
    assert_eq!(schema["properties"]["n"]["maximum"], 100_000, "{schema}");
    let one = run(&["objects", "count", "--json"]).expect(0).json();
    assert_eq!(one["kind"], "builtin");
    assert_eq!(one["args_schema"], schema);

    let ran = run(&["objects", "nope"]).expect(6);
    assert!(ran.stderr.contains("no object \"nope\""), "{ran:#?}");
}

#[test]
fn submit_follow_prints_one_line_per_event() {
    let ran = run(&["submit", "count", "n:=2", "--follow"]).expect(0);
    let events = ran.events();
    assert_eq!(states(&events), ["queued", "running", "running", "success"]);
    assert_eq!(events.iter().map(|e| e.0).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!(events[0].2, Value::Null);
    assert_eq!(
        events[1].2,
        json!({"i": 1, "n": 2, "progress": 0.5, "message": "1/2"})
    );
    assert_eq!(events[3].2, json!({"n": 2}));
    assert!(ran.stderr.starts_with("longrun: run "), "{ran:#?}");
}

#[test]
fn submit_follow_json_prints_one_event_object_per_line() {
    let ran = run(&["--json", "submit", "count", "n:=2", "--follow"]).expect(0);
    let lines: Vec<Value> = ran
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{ran:#?}");
    assert_eq!(lines[0], json!({"id": 0, "state": "queued", "value": null}));
    assert_eq!(
        lines[3],
        json!({"id": 3, "state": "success", "value": {"n": 2}})
    );
}

#[test]
fn follow_resumes_from_a_cursor() {
    let url = submit(&["count", "n:=3"]);
    let ran = run(&["follow", &url, "--from", "2"]).expect(0);
    let events = ran.events();
    assert_eq!(
        events.iter().map(|e| e.0).collect::<Vec<_>>(),
        [3, 4],
        "{ran:#?}"
    );
    assert_eq!(states(&events), ["running", "success"]);

    // A bare path is resolved against the server; long polling gives the same events.
    let path = url.strip_prefix(server()).unwrap();
    let ran = run(&["follow", path, "--from", "0", "--transport", "poll"]).expect(0);
    assert_eq!(
        states(&ran.events()),
        ["running", "running", "running", "success"]
    );

    // Nothing after the terminal event: no lines, and the exit code is still the outcome.
    let ran = run(&["follow", &url, "--from", "4"]).expect(0);
    assert_eq!(ran.stdout, "");
    let failed = submit(&["fail"]);
    run(&["wait", &failed]).expect(1);
    run(&["follow", &failed, "--from", "1"]).expect(1);
}

#[test]
fn wait_prints_only_the_value() {
    let url = submit(&["count", "n:=2"]);
    let ran = run(&["wait", &url]).expect(0);
    assert_eq!(ran.stdout, "{\"n\":2}\n");
    assert_eq!(ran.stderr, "");
}

#[test]
fn a_failed_run_exits_1_with_its_message() {
    let url = submit(&["fail", "message=disk full"]);
    let ran = run(&["wait", &url]).expect(1);
    assert_eq!(ran.stdout, "");
    assert!(ran.stderr.contains("run failed: disk full"), "{ran:#?}");

    let ran = run(&["follow", &url]).expect(1);
    let events = ran.events();
    assert_eq!(states(&events), ["queued", "error"]);
    assert_eq!(events[1].2, json!({"message": "disk full"}));
    assert!(ran.stderr.contains("run failed: disk full"), "{ran:#?}");
}

#[test]
fn cancel_then_wait_exits_3() {
    let url = submit(&["sleep", "ms:=3600000"]);
    let ran = run(&["cancel", &url]).expect(0);
    assert_eq!(ran.stdout, format!("canceling {url}\n"));
    let ran = run(&["wait", &url]).expect(3);
    assert!(ran.stderr.contains("canceled"), "{ran:#?}");
    assert_eq!(run(&["exists", &url]).expect(0).stdout, "canceled\n");

    // Cancelling a run that already succeeded changes nothing, and says so.
    let done = submit(&["echo"]);
    run(&["wait", &done]).expect(0);
    let ran = run(&["cancel", &done]).expect(0);
    assert_eq!(
        ran.stdout,
        format!("already ended (success), nothing to cancel: {done}\n")
    );
    let ran = run(&["--json", "cancel", &done]).expect(0);
    assert_eq!(
        ran.json(),
        json!({"url": done, "outcome": "already_ended", "state": "success"})
    );
}

#[test]
fn exists_exits_0_or_1() {
    let url = submit(&["echo"]);
    run(&["wait", &url]).expect(0);
    assert_eq!(run(&["exists", &url]).expect(0).stdout, "success\n");
    assert_eq!(
        run(&["--json", "exists", &url]).expect(0).json(),
        json!({"exists": true, "state": "success", "last_event_id": 1})
    );

    let unknown = format!("{}/echo/{UNKNOWN_ID}", server());
    let ran = run(&["exists", &unknown]).expect(1);
    assert_eq!(
        (ran.stdout.as_str(), ran.stderr.as_str()),
        ("not found\n", "")
    );
    assert_eq!(
        run(&["--json", "exists", &unknown]).expect(1).json(),
        json!({"exists": false, "gone": false})
    );
}

#[test]
fn wait_timeout_exits_4_and_the_run_goes_on() {
    let url = submit(&["sleep", "ms:=3600000"]);
    let ran = run(&["wait", &url, "--timeout", "100ms"]).expect(4);
    assert_eq!(ran.stdout, "");
    assert!(ran.stderr.contains("timed out"), "{ran:#?}");
    assert!(
        ran.stderr.contains(&format!("longrun cancel {url}")),
        "{ran:#?}"
    );
    // Still going: queued, as `sleep` emits nothing until it ends.
    assert_eq!(run(&["exists", &url]).expect(0).stdout, "queued\n");

    let ran = run(&["wait", &url, "--timeout", "100ms", "--cancel-on-timeout"]).expect(4);
    assert!(ran.stderr.contains("canceled it"), "{ran:#?}");
    run(&["wait", &url]).expect(3);
}

#[test]
fn a_dead_server_exits_5() {
    let dead = dead_server();
    let ran = run(&["--server", &dead, "submit", "echo"]).expect(5);
    assert_eq!(ran.stdout, "");
    assert!(ran.stderr.contains("connection failed"), "{ran:#?}");
    assert!(ran.stderr.contains(&dead), "{ran:#?}");
    assert!(ran.stderr.contains("--server"), "{ran:#?}");

    let ran = run(&["exists", &format!("{dead}/echo/{UNKNOWN_ID}")]).expect(5);
    assert!(ran.stderr.contains("connection failed"), "{ran:#?}");
}

#[test]
fn an_unknown_run_or_object_exits_6() {
    let unknown = format!("{}/echo/{UNKNOWN_ID}", server());
    for command in ["wait", "follow", "cancel"] {
        let ran = run(&[command, &unknown]).expect(6);
        assert_eq!(ran.stdout, "", "{command}");
        assert!(ran.stderr.contains("not found"), "{command}: {ran:#?}");
        assert!(
            ran.stderr.contains("check the run URL"),
            "{command}: {ran:#?}"
        );
    }
    let ran = run(&["submit", "nosuchobject"]).expect(6);
    assert!(ran.stderr.contains("check the object name"), "{ran:#?}");
}

#[test]
fn cancel_on_interrupt_cancels_the_run() {
    let mut child = Running::spawn(&[
        "submit",
        "sleep",
        "ms:=3600000",
        "--follow",
        "--cancel-on-interrupt",
    ]);
    let url = child.run_url();
    assert_eq!(child.stdout_line(), "0 queued null\n");
    child.interrupt();
    let ran = child.finish().expect(130);
    assert_eq!(ran.stdout, "0 queued null\n");
    assert!(ran.stderr.contains("canceled the run"), "{ran:#?}");
    run(&["wait", &url]).expect(3);
}

#[test]
fn cancel_on_interrupt_while_waiting() {
    let mut child = Running::spawn(&[
        "submit",
        "sleep",
        "ms:=3600000",
        "--wait",
        "--cancel-on-interrupt",
    ]);
    let url = child.run_url();
    child.interrupt();
    let ran = child.finish().expect(130);
    assert_eq!(ran.stdout, "");
    assert!(ran.stderr.contains("canceled the run"), "{ran:#?}");
    run(&["wait", &url]).expect(3);
}

#[test]
fn interrupt_without_a_terminal_leaves_the_run_going() {
    let url = submit(&["sleep", "ms:=3600000"]);
    let mut child = Running::spawn(&["follow", &url]);
    assert_eq!(child.stdout_line(), "0 queued null\n");
    child.interrupt();
    let ran = child.finish().expect(130);
    assert!(ran.stderr.contains("the run goes on"), "{ran:#?}");
    assert!(
        ran.stderr.contains(&format!("longrun cancel {url}")),
        "{ran:#?}"
    );
    assert_eq!(run(&["exists", &url]).expect(0).stdout, "queued\n");
    run(&["cancel", &url]).expect(0);
}

// ---- A server with tenants: --token, LONGRUN_TOKEN, --token-file, --idempotency-key ----

const TOKEN: &str = "lrt_cli_test_all_scopes";
const READ_TOKEN: &str = "lrt_cli_test_read_only";

/// A demo server with one tenant (a token for everything and one that only reads), shared by
/// the tests of this binary.
fn auth_server() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        use longrun_server::auth::token_hash;
        let toml = format!(
            "[[tenant]]\nname = \"cli\"\n\
             [[tenant.token]]\nhash = \"{}\"\nscopes = [\"submit\", \"read\", \"cancel\"]\n\
             [[tenant.token]]\nhash = \"{}\"\nscopes = [\"read\"]\n",
            token_hash(TOKEN),
            token_hash(READ_TOKEN),
        );
        let auth = longrun_server::Auth::from_toml(&toml).unwrap();
        spawn_server(move || longrun_server::Server::builder().auth(auth))
    })
}

/// `longrun ARGS` against the server with tenants.
fn on_auth_server(args: &[&str], token_env: Option<&str>) -> Ran {
    let mut cmd = longrun(args);
    cmd.env("LONGRUN_SERVER", auth_server());
    if let Some(token) = token_env {
        cmd.env("LONGRUN_TOKEN", token);
    }
    Ran::of(cmd.output().unwrap())
}

#[track_caller]
fn shows_no_token(ran: &Ran) {
    for token in [TOKEN, READ_TOKEN, "lrt_unknown"] {
        assert!(!ran.stdout.contains(token), "{ran:#?}");
        assert!(!ran.stderr.contains(token), "{ran:#?}");
    }
}

#[test]
fn without_a_token_or_with_an_unknown_one_exits_7() {
    for (args, env) in [
        (vec!["submit", "echo"], None),
        (vec!["submit", "echo"], Some("lrt_unknown")),
        (vec!["--token", "lrt_unknown", "submit", "echo"], None),
    ] {
        let ran = on_auth_server(&args, env).expect(7);
        assert_eq!(ran.stdout, "");
        assert!(ran.stderr.contains("unauthorized (401)"), "{ran:#?}");
        assert!(ran.stderr.contains("--token-file"), "{ran:#?}");
        shows_no_token(&ran);
    }
}

#[test]
fn a_token_from_the_flag_the_environment_or_a_file_gets_in() {
    let ran = on_auth_server(
        &["--token", TOKEN, "submit", "echo", "a:=1", "--wait"],
        None,
    )
    .expect(0);
    assert_eq!(ran.stdout.trim(), r#"{"a":1}"#);
    shows_no_token(&ran);
    let url = on_auth_server(&["submit", "echo", "b:=2"], Some(TOKEN)).expect(0);
    shows_no_token(&url);
    let url = url.stdout.trim().to_owned();
    let ran = on_auth_server(&["wait", &url], Some(TOKEN)).expect(0);
    assert_eq!(ran.stdout.trim(), r#"{"b":2}"#);

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let file = dir.join("token");
    std::fs::write(&file, format!("  {TOKEN}\n")).unwrap();
    let file = file.to_str().unwrap();
    let ran = on_auth_server(&["--token-file", file, "exists", &url], None).expect(0);
    assert_eq!(ran.stdout.trim(), "success");
    // --token with --token-file is a usage error.
    let ran = on_auth_server(
        &["--token", TOKEN, "--token-file", file, "exists", &url],
        None,
    )
    .expect(2);
    shows_no_token(&ran);
    std::fs::write(dir.join("empty"), "\n").unwrap();
    let empty = dir.join("empty");
    let ran = on_auth_server(
        &["--token-file", empty.to_str().unwrap(), "exists", &url],
        None,
    )
    .expect(2);
    assert!(ran.stderr.contains("is empty"), "{ran:#?}");
    let missing = dir.join("missing");
    let ran = on_auth_server(
        &["--token-file", missing.to_str().unwrap(), "exists", &url],
        None,
    )
    .expect(2);
    assert!(
        ran.stderr.contains("cannot read the token file"),
        "{ran:#?}"
    );
}

#[test]
fn a_token_without_the_scope_exits_7() {
    let ran = on_auth_server(&["submit", "echo"], Some(READ_TOKEN)).expect(7);
    assert!(ran.stderr.contains("forbidden (403)"), "{ran:#?}");
    assert!(ran.stderr.contains("scope"), "{ran:#?}");
    shows_no_token(&ran);
    let url = on_auth_server(&["submit", "sleep", "ms:=60000"], Some(TOKEN)).expect(0);
    let url = url.stdout.trim().to_owned();
    // It may read, not cancel.
    on_auth_server(&["exists", &url], Some(READ_TOKEN)).expect(0);
    let ran = on_auth_server(&["cancel", &url], Some(READ_TOKEN)).expect(7);
    assert!(ran.stderr.contains("forbidden"), "{ran:#?}");
    on_auth_server(&["cancel", &url], Some(TOKEN)).expect(0);
}

/// Needs the server's `Idempotency-Key` (spec §4.3).
#[test]
fn submit_with_an_idempotency_key_twice_prints_the_same_run() {
    let key = format!("cli-{}", std::process::id());
    let first = on_auth_server(
        &["submit", "echo", "a:=1", "--idempotency-key", &key],
        Some(TOKEN),
    )
    .expect(0);
    let again = on_auth_server(
        &["submit", "echo", "a:=1", "--idempotency-key", &key],
        Some(TOKEN),
    )
    .expect(0);
    assert_eq!(first.stdout, again.stdout);
    let other = on_auth_server(
        &["submit", "echo", "a:=2", "--idempotency-key", &key],
        Some(TOKEN),
    )
    .expect(2);
    assert_eq!(other.stdout, "");
    assert!(other.stderr.contains("a new key"), "{other:#?}");
    let bad = run(&["submit", "echo", "--idempotency-key", "has space"]).expect(2);
    assert!(bad.stderr.contains("idempotency key"), "{bad:#?}");
}

/// `longrun stream URL > file` writes the run's byte stream (spec §27), every byte once; the
/// stream's own URL works too, `--from N` starts at byte N, and the exit code is the run's.
#[test]
fn stream_writes_the_bytes_to_stdout() {
    let run = submit(&["bytes", "n:=100000", "chunk:=999"]);
    let pattern: Vec<u8> = (0..100_000usize).map(|i| (i % 251) as u8).collect();
    for (url, from) in [
        (run.clone(), 0),
        (format!("{run}/stream"), 0),
        (run.clone(), 4321),
    ] {
        let from_arg = from.to_string();
        let out = longrun(&["stream", &url, "--from", &from_arg])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == pattern[from..], "{url} from {from}");
    }
    // A run without a stream: an error on stderr, nothing on stdout.
    let echo = submit(&["echo"]);
    let out = longrun(&["stream", &echo]).output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stream"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn follow_over_the_websocket_prints_the_same_events() {
    let url = submit(&["count", "n:=2"]);
    let ran = run(&["follow", &url, "--transport", "ws"]).expect(0);
    assert_eq!(
        states(&ran.events()),
        ["queued", "running", "running", "success"]
    );
}

#[test]
fn sub_prints_what_pub_publishes() {
    // A topic of this test alone; from offset 0, so it does not matter whether the
    // subscription is up before the first publication.
    let topic = format!("cli.t{}", std::process::id());
    let mut sub = Running::spawn(&["sub", &topic, "--since", "0"]);
    for (i, data) in [r#"{"a":1}"#, "[2]"].into_iter().enumerate() {
        let ran = run(&["pub", &topic, data]).expect(0);
        assert_eq!(ran.stdout, format!("{i}\n"));
    }
    let line: Value = serde_json::from_str(&sub.stdout_line()).unwrap();
    assert_eq!(line, json!({"topic": topic, "offset": 0, "data": {"a": 1}}));
    let line: Value = serde_json::from_str(&sub.stdout_line()).unwrap();
    assert_eq!(line["data"], json!([2]));
    sub.child.kill().unwrap();
    let _ = sub.child.wait();
    let ran = run(&["--json", "pub", &topic, "3"]).expect(0);
    assert_eq!(ran.json(), json!({"topic": topic, "offset": 2}));
    // Bad data and a reserved topic are usage errors.
    run(&["pub", &topic, "{nope"]).expect(2);
    let ran = run(&["pub", "_runs", "1"]).expect(2);
    assert!(ran.stderr.contains("reserved"), "{ran:#?}");
}

/// `longrun ls`: a table, JSON lines, pages with the token on stderr, every page with --all;
/// on a server of its own, so only this test's runs are listed.
#[test]
fn ls_lists_runs_newest_first_in_pages() {
    let base = spawn_server(longrun_server::Server::builder);
    let ls = |args: &[&str]| {
        let mut cmd = longrun(&[&["ls"], args].concat());
        cmd.env("LONGRUN_SERVER", &base);
        Ran::of(cmd.output().unwrap())
    };
    let mut urls: Vec<String> = (0..3)
        .map(|i| {
            let mut cmd = longrun(&["submit", "echo", &format!("i:={i}")]);
            cmd.env("LONGRUN_SERVER", &base);
            Ran::of(cmd.output().unwrap())
                .expect(0)
                .stdout
                .trim_end()
                .to_owned()
        })
        .collect();
    urls.reverse();
    let table = ls(&[]).expect(0);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(
        lines[0].starts_with("STATE") && lines[0].ends_with("URL"),
        "{table:#?}"
    );
    let listed: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(listed, urls, "newest first");
    assert!(lines[1].starts_with("success "), "{table:#?}");

    let first = ls(&["--json", "--limit", "2"]).expect(0);
    let runs: Vec<Value> = first
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["url"], urls[0]);
    assert_eq!(runs[0]["object"], "echo");
    assert_eq!(runs[0]["state"], "success");
    assert!(runs[0]["created"].is_string() && runs[0]["ended"].is_string());
    let token = first
        .stderr
        .split("--page-token ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no page token: {first:#?}"));
    let rest = ls(&["--json", "--page-token", token]).expect(0);
    assert_eq!(rest.stderr, "", "the last page");
    let last: Value = serde_json::from_str(rest.stdout.trim_end()).unwrap();
    assert_eq!(last["url"], urls[2]);

    let all = ls(&["--json", "--all", "--limit", "1", "--object", "echo"]).expect(0);
    let all: Vec<String> = all
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["url"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(all, urls);
    assert_eq!(ls(&["--json", "--state", "error"]).expect(0).stdout, "");

    let bad = ls(&["--state", "done"]).expect(2);
    assert!(bad.stderr.contains("state"), "{bad:#?}");
    let mut cmd = longrun(&["ls"]);
    cmd.env("LONGRUN_SERVER", dead_server());
    Ran::of(cmd.output().unwrap()).expect(5);
}
