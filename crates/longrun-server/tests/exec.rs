//! Exec objects end to end: a real server on a loopback port runs the POSIX sh scripts in
//! `tests/fixtures/`, and every assertion is about what a client (or `ps`) can see — the
//! events of the run, files the scripts leave behind, and which processes are still alive.
//!
//! Scripts that must be in a known state before a test acts print `ready` first; the test
//! waits for that event, never for time to pass.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{TestServer, request};
use longrun_proto::Progress;
use longrun_server::exec::ExecSpec;
use longrun_server::{Config, Server};
use serde_json::{Value, json};

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A word of a command line, quoted for the shell-word splitting of `--exec`.
fn word(s: impl AsRef<str>) -> String {
    shell_words::quote(s.as_ref()).into_owned()
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("temporary paths are UTF-8").to_owned()
}

/// `command` as given to `--exec NAME=command`.
fn exec(command: &str) -> ExecSpec {
    ExecSpec::from_command_line(command).unwrap()
}

/// An `[exec.NAME]` table, written as JSON.
fn exec_table(table: Value) -> ExecSpec {
    serde_json::from_value(table).unwrap()
}

async fn serve(config: Config, objects: Vec<(&str, ExecSpec)>) -> TestServer {
    let mut builder = Server::builder().config(config);
    for (name, spec) in objects {
        builder = builder.object_with(name, spec.options().unwrap(), spec.handler().unwrap());
    }
    TestServer::start(builder).await
}

/// Submit `args` to a fresh server's only object `name` and return every event of the run.
async fn run_once(name: &str, spec: ExecSpec, args: Value) -> Vec<Value> {
    let ts = serve(Config::default(), vec![(name, spec)]).await;
    let path = ts.submit(name, args).await;
    ts.events(&path).await
}

/// The values of the `running` events.
fn running(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["state"] == "running")
        .map(|e| e["value"].clone())
        .collect()
}

/// The terminal event's state and value.
fn outcome(events: &[Value]) -> (String, Value) {
    let last = events.last().unwrap();
    (
        last["state"].as_str().unwrap().to_owned(),
        last["value"].clone(),
    )
}

/// Long-poll until an event satisfies `until`; returns the events up to and including it.
async fn events_until(ts: &TestServer, path: &str, until: impl Fn(&Value) -> bool) -> Vec<Value> {
    let client = reqwest::Client::new();
    let mut seen: Vec<Value> = Vec::new();
    loop {
        let mut req = client.get(ts.url(path)).query(&[("wait", "60")]);
        if let Some(last) = seen.last() {
            req = req.header("last-event-id", last["id"].to_string());
        }
        let batch: Vec<Value> = req.send().await.unwrap().json().await.unwrap();
        for event in batch {
            let found = until(&event);
            seen.push(event);
            if found {
                return seen;
            }
            let state = seen.last().unwrap()["state"].as_str().unwrap();
            assert!(
                ["queued", "running"].contains(&state),
                "the run ended before the awaited event: {seen:?}"
            );
        }
    }
}

async fn wait_ready(ts: &TestServer, path: &str) {
    events_until(ts, path, |e| e["value"] == "ready").await;
}

/// Serve `script FILE EXTRA` as the object `x` with the given grace period, submit a run and
/// wait until the script has printed `ready`; returns the server and the run's path.
async fn ready_run(
    script: &str,
    file: &Path,
    extra: &str,
    grace: Duration,
) -> (TestServer, String) {
    let command = format!("{} {} {extra}", word(fixture(script)), word(path_str(file)));
    let config = Config {
        grace,
        ..Default::default()
    };
    let ts = serve(config, vec![("x", exec(&command))]).await;
    let path = ts.submit("x", json!({})).await;
    wait_ready(&ts, &path).await;
    (ts, path)
}

async fn cancel(ts: &TestServer, path: &str) -> (u16, Value) {
    let res = reqwest::Client::new()
        .delete(ts.url(path))
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

/// What `/proc` says about a process: its process group, and whether it is done for —
/// gone, a zombie, already exiting, or with a SIGKILL pending (which nothing can catch or
/// ignore). The server's SIGKILL and the end of the run's stdout both happen before the
/// terminal event, so right after that event every process of the run must be done for.
struct Proc {
    pgrp: i32,
    doomed: bool,
}

/// `PF_EXITING` in the flags of `/proc/PID/stat`: set as the kernel starts tearing a process
/// down, before it closes its files.
const PF_EXITING: u64 = 0x4;

fn proc_info(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp session tty_nr tpgid flags …`; comm may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let state = fields[0];
    let pgrp: i32 = fields[2].parse().ok()?;
    let flags: u64 = fields[6].parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let sigkill_pending = status.lines().any(|l| {
        let mask = l
            .strip_prefix("SigPnd:")
            .or_else(|| l.strip_prefix("ShdPnd:"));
        mask.and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .is_some_and(|m| m & (1 << (9 - 1)) != 0)
    });
    let doomed = matches!(state, "Z" | "X") || flags & PF_EXITING != 0 || sigkill_pending;
    Some(Proc { pgrp, doomed })
}

/// The pids of the live (not doomed) processes in process group `pgrp`.
fn live_members(pgrp: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| proc_info(pid).is_some_and(|p| p.pgrp == pgrp && !p.doomed))
        .collect()
}

/// The pids a fixture wrote to `file` (its own first).
fn read_pids(file: &Path) -> Vec<i32> {
    std::fs::read_to_string(file)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

#[tokio::test]
async fn arguments_arrive_on_stdin_and_in_longrun_args_with_the_run_identity() {
    let ts = serve(
        Config::default(),
        vec![("report", exec(&word(fixture("report.sh"))))],
    )
    .await;
    let args = json!({"name": "x", "n": [1, 2.5, null], "nested": {"ok": true}});
    let path = ts.submit("report", args.clone()).await;
    let events = ts.events(&path).await;
    let id = path.rsplit('/').next().unwrap();
    assert_eq!(
        running(&events),
        vec![
            args.clone(),
            args,
            json!({"run_id": id, "object": "report"})
        ],
        "{events:?}"
    );
    assert_eq!(outcome(&events), ("success".into(), Value::Null));
}

#[tokio::test]
async fn arguments_with_shell_metacharacters_are_never_interpreted() {
    let dir = tempfile::tempdir().unwrap();
    let pwned = |n: u32| path_str(&dir.path().join(format!("pwned-{n}")));
    let keep = dir.path().join("keep");
    std::fs::create_dir(&keep).unwrap();
    let args = json!({
        "subst": format!("$(touch {})", pwned(1)),
        "backticks": format!("`touch {}`", pwned(2)),
        "semicolon": format!("x; touch {}; rm -rf {}", pwned(3), path_str(&keep)),
        "quotes": "it's \"quoted\" 'twice'",
        "glob_and_vars": "* $HOME ${PATH} \\ | & > /dev/null",
        "newline": format!("a\ntouch {}", pwned(4)),
    });
    // Directly, and through `sh -c` when the object asks for a shell: in both cases the
    // arguments only travel as data.
    let shell = exec_table(json!({"command": "printf '%s\\n' \"$LONGRUN_ARGS\"", "shell": true}));
    let ts = serve(
        Config::default(),
        vec![
            ("direct", exec(&word(fixture("report.sh")))),
            ("shell", shell),
        ],
    )
    .await;
    let direct = ts.submit("direct", args.clone()).await;
    let direct = ts.events(&direct).await;
    assert_eq!(
        &running(&direct)[..2],
        &[args.clone(), args.clone()],
        "{direct:?}"
    );
    assert_eq!(outcome(&direct).0, "success");
    let shelled = ts.submit("shell", args.clone()).await;
    let shelled = ts.events(&shelled).await;
    assert_eq!(running(&shelled), vec![args], "{shelled:?}");
    assert_eq!(outcome(&shelled).0, "success");

    for n in 1..=4 {
        assert!(
            !Path::new(&pwned(n)).exists(),
            "an argument was run as a command: {}",
            pwned(n)
        );
    }
    assert!(keep.exists(), "an argument was run as a command: rm -rf");
}

#[tokio::test]
async fn stdout_lines_become_running_events() {
    let events = run_once("output", exec(&word(fixture("output.sh"))), json!({})).await;
    assert_eq!(
        running(&events),
        vec![
            json!({"step": 1}),
            json!("plain text line"),
            json!({"progress": 0.5, "message": "half way"}),
            json!(42),
            json!("crlf text"),
            json!("last line without newline"),
        ],
        "JSON lines as JSON, other lines as strings, empty lines skipped, CR stripped: {events:?}"
    );
    let progress = Progress::from_value(&running(&events)[2]).unwrap();
    assert_eq!(progress.fraction, Some(0.5));
    assert_eq!(progress.message.as_deref(), Some("half way"));
    assert_eq!(outcome(&events), ("success".into(), Value::Null));
    let ids: Vec<u64> = events.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (0..8).collect::<Vec<_>>());
}

#[tokio::test]
async fn an_over_long_or_non_utf8_line_does_not_stop_the_output() {
    // The deadline only turns a regression (the program blocked on a full stdout pipe that
    // nobody reads any more) into a failed assertion instead of a hung test.
    let odd = |mode: &str| {
        exec_table(json!({"command": [fixture("odd-lines.sh"), mode], "timeout": "10m"}))
    };
    let ts = serve(
        Config::default(),
        vec![
            ("too-long", odd("too-long")),
            ("invalid-utf8", odd("invalid-utf8")),
        ],
    )
    .await;

    let path = ts.submit("too-long", json!({})).await;
    let events = ts.events(&path).await;
    assert_eq!(running(&events), vec![json!({"after": true})], "{events:?}");
    assert_eq!(outcome(&events), ("success".into(), Value::Null));

    let path = ts.submit("invalid-utf8", json!({})).await;
    let events = ts.events(&path).await;
    assert_eq!(
        running(&events),
        vec![json!("caf\u{fffd}"), json!({"after": true})],
        "{events:?}"
    );
    assert_eq!(outcome(&events), ("success".into(), Value::Null));
}

#[tokio::test]
async fn the_result_file_becomes_the_success_value() {
    let cases = [
        ("json", json!({"ok": true, "n": [1, 2]})),
        ("text", json!("all done")),
        ("lines", json!("line one\r\nline two\n")),
        ("empty", Value::Null),
        ("missing", Value::Null),
    ];
    let objects = cases
        .iter()
        .map(|(mode, _)| {
            (
                *mode,
                exec(&format!("{} {mode}", word(fixture("result.sh")))),
            )
        })
        .collect();
    let ts = serve(Config::default(), objects).await;
    for (mode, expected) in cases {
        let path = ts.submit(mode, json!({})).await;
        let events = ts.events(&path).await;
        assert_eq!(
            outcome(&events),
            ("success".into(), expected),
            "{mode}: {events:?}"
        );
        let file = running(&events)[0]["result_file"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            !Path::new(&file).exists(),
            "{mode}: the result file outlived its run"
        );
    }
}

#[tokio::test]
async fn a_failing_program_is_an_error_with_its_exit_code_or_signal_and_stderr() {
    let stderr = "checking the disk\ndisk full\n";
    let cases = [
        (
            "exit",
            json!({"message": "exited with status 3", "exit_code": 3, "stderr": stderr}),
        ),
        (
            "signal",
            json!({"message": "killed by signal 9", "signal": 9, "stderr": stderr}),
        ),
    ];
    for (mode, expected) in cases {
        let command = format!("{} {mode}", word(fixture("fail.sh")));
        let events = run_once("fail", exec(&command), json!({})).await;
        assert_eq!(outcome(&events), ("error".into(), expected), "{mode}");
    }
}

#[tokio::test]
async fn a_command_string_is_split_by_shell_word_rules_without_a_shell() {
    let line = format!(
        r#"{} "two words" 'single '\''quoted'\''' back\ slash '$HOME' '*' "a \"b\" c" $(nope)"#,
        word(fixture("argv.sh"))
    );
    let events = run_once("argv", exec(&line), json!({})).await;
    assert_eq!(
        running(&events),
        vec![
            json!("two words"),
            json!("single 'quoted'"),
            json!("back slash"),
            json!("$HOME"),
            json!("*"),
            json!("a \"b\" c"),
            json!("$(nope)"),
        ],
        "{events:?}"
    );

    let argv = exec_table(json!({"command": [fixture("argv.sh"), "x y", "$(nope)", ""]}));
    let events = run_once("argv", argv, json!({})).await;
    assert_eq!(
        running(&events),
        vec![json!("x y"), json!("$(nope)")],
        "{events:?}"
    );
}

#[tokio::test]
async fn shell_true_runs_the_command_with_sh_in_the_configured_cwd_and_env() {
    let dir = tempfile::tempdir().unwrap();
    let command = "echo \"$LONGRUN_OBJECT\" | tr a-z A-Z; echo $((2 + 3)); pwd; echo \"$GREETING\"";
    let shelly = exec_table(json!({
        "command": command,
        "shell": true,
        "cwd": dir.path(),
        "env": {"GREETING": "hello from env"},
    }));
    let events = run_once("shelly", shelly, json!({})).await;
    let cwd = path_str(&dir.path().canonicalize().unwrap());
    assert_eq!(
        running(&events),
        vec![
            json!("SHELLY"),
            json!(5),
            json!(cwd),
            json!("hello from env")
        ],
        "{events:?}"
    );
    assert_eq!(outcome(&events).0, "success");

    // Without `shell`, the same kind of string is split into words for a program run directly.
    let events = run_once(
        "plain",
        exec("echo \"$LONGRUN_OBJECT\" | tr a-z A-Z"),
        json!({}),
    )
    .await;
    assert_eq!(
        running(&events),
        vec![json!("$LONGRUN_OBJECT | tr a-z A-Z")],
        "{events:?}"
    );
}

#[test]
fn commands_that_cannot_be_run_are_refused_when_the_object_is_defined() {
    let err = ExecSpec::from_command_line("echo 'unterminated").unwrap_err();
    assert!(err.contains("cannot split command"), "{err}");
    let err = ExecSpec::from_command_line("   ").unwrap_err();
    assert!(err.contains("empty"), "{err}");
    let argv_with_shell = exec_table(json!({"command": ["echo", "hi"], "shell": true}));
    let err = argv_with_shell.handler().err().unwrap();
    assert!(
        err.contains("shell = true needs the command as one string"),
        "{err}"
    );
    let unknown: Result<ExecSpec, _> =
        serde_json::from_value(json!({"command": "echo", "shel": true}));
    assert!(
        unknown
            .unwrap_err()
            .to_string()
            .contains("unknown field `shel`")
    );
}

#[tokio::test]
async fn a_program_that_cannot_be_started_ends_the_run_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let not_executable = dir.path().join("not-executable.sh");
    std::fs::write(&not_executable, "#!/bin/sh\necho hi\n").unwrap();
    let ts = serve(
        Config::default(),
        vec![
            ("missing", exec("longrun-test-no-such-program --version")),
            ("noexec", exec(&word(path_str(&not_executable)))),
        ],
    )
    .await;
    // The submit is accepted like any other (201, no 5xx); the run reports the failure.
    let events = ts.events(&ts.submit("missing", json!({})).await).await;
    let (state, value) = outcome(&events);
    assert_eq!(state, "error", "{events:?}");
    let message = value["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "cannot start \"longrun-test-no-such-program\": No such file or directory"
        ),
        "{message}"
    );

    let events = ts.events(&ts.submit("noexec", json!({})).await).await;
    let (state, value) = outcome(&events);
    assert_eq!(state, "error", "{events:?}");
    let message = value["message"].as_str().unwrap();
    assert!(
        message.starts_with("cannot start ") && message.contains("Permission denied"),
        "{message}"
    );

    // The server itself is fine.
    let health = ts.raw(&request("GET", "/_health", &[], "")).await;
    assert_eq!(health.status, 200);
}

#[tokio::test]
async fn large_arguments_always_reach_stdin_and_longrun_args_only_up_to_64_kib() {
    let ts = serve(
        Config::default(),
        vec![("size", exec(&word(fixture("args-size.sh"))))],
    )
    .await;
    // `{"blob":"…"}` is 11 bytes plus the blob; 200 000 bytes is beyond what the kernel takes
    // as one environment string (128 KiB), well within the default body limit.
    for (len, env_args) in [(65536, true), (65537, false), (200_000, false)] {
        let args = json!({"blob": "x".repeat(len - 11)});
        assert_eq!(args.to_string().len(), len);
        let events = ts.events(&ts.submit("size", args).await).await;
        assert_eq!(
            running(&events),
            vec![json!({"stdin_bytes": len, "env_args": env_args})],
            "{len} bytes of arguments: {events:?}"
        );
        assert_eq!(outcome(&events).0, "success");
    }
}

#[tokio::test]
async fn cancel_sends_sigterm_to_the_program() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    // A grace period far longer than the script needs: the run must end because the script
    // handled SIGTERM, not because the server gave up on it.
    let (ts, path) = ready_run("term.sh", &marker, "", Duration::from_secs(600)).await;

    let (status, body) = cancel(&ts, &path).await;
    assert_eq!(status, 202);
    assert_eq!(body["state"], "running");
    let events = ts.events(&path).await;
    assert_eq!(
        outcome(&events),
        ("canceled".into(), json!({"reason": "client"}))
    );
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "TERM\n",
        "the trap ran"
    );
}

#[tokio::test]
async fn a_program_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let (ts, path) = ready_run("ignore-term.sh", &pids, "", Duration::from_millis(100)).await;
    let group = read_pids(&pids)[0];
    assert_eq!(
        live_members(group).len(),
        2,
        "the script and its sleep run in their own group"
    );

    assert_eq!(cancel(&ts, &path).await.0, 202);
    let events = ts.events(&path).await;
    assert_eq!(
        outcome(&events),
        ("canceled".into(), json!({"reason": "client"}))
    );
    assert_eq!(
        live_members(group),
        Vec::<i32>::new(),
        "SIGKILL reached the whole group"
    );
}

/// `background.sh` leaves a child in its process group (`mode`: "plain", "ignore-term" or
/// "exit", see the script); a canceled run (or, with "exit", an ended one) leaves nothing of
/// the group alive. The child's output goes elsewhere, so the server does not wait for it:
/// only the kill of the group when the script exits can stop it.
async fn background_child_dies_with_the_run(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    // The grace period never runs out here: the script dies of SIGTERM at once (or exits),
    // and the server must then kill what it left behind.
    let (ts, path) = ready_run("background.sh", &pids, mode, Duration::from_secs(600)).await;
    if mode != "exit" {
        let (script, child) = (read_pids(&pids)[0], read_pids(&pids)[1]);
        let before = proc_info(child).expect("the background child runs");
        assert_eq!(
            before.pgrp, script,
            "the child is in the script's process group"
        );
        assert!(!before.doomed);
        assert_eq!(cancel(&ts, &path).await.0, 202);
    }
    let events = ts.events(&path).await;
    let expected = if mode == "exit" {
        ("success".into(), Value::Null)
    } else {
        ("canceled".into(), json!({"reason": "client"}))
    };
    assert_eq!(outcome(&events), expected);
    let (script, child) = (read_pids(&pids)[0], read_pids(&pids)[1]);
    assert!(
        proc_info(child).is_none_or(|p| p.doomed),
        "the background child survived"
    );
    assert_eq!(
        live_members(script),
        Vec::<i32>::new(),
        "a process of the group survived"
    );
}

#[tokio::test]
async fn a_background_child_does_not_outlive_a_canceled_run() {
    background_child_dies_with_the_run("plain").await;
}

#[tokio::test]
async fn a_background_child_that_ignores_sigterm_does_not_outlive_a_canceled_run() {
    background_child_dies_with_the_run("ignore-term").await;
}

#[tokio::test]
async fn a_background_child_does_not_outlive_a_program_that_exited() {
    background_child_dies_with_the_run("exit").await;
}

#[tokio::test]
async fn the_object_timeout_cancels_the_run_with_reason_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let slow = exec_table(json!({
        "command": [fixture("term.sh"), dir.path().join("marker")],
        "timeout": "200ms",
    }));
    let ts = serve(Config::default(), vec![("slow", slow)]).await;
    let path = ts.submit("slow", json!({})).await;
    let events = ts.events(&path).await;
    assert_eq!(
        outcome(&events),
        ("canceled".into(), json!({"reason": "deadline"}))
    );

    // A later DELETE is accepted again but does not change the reason.
    let (status, body) = cancel(&ts, &path).await;
    assert_eq!(status, 202);
    assert_eq!(body["state"], "canceled");
    assert_eq!(ts.events(&path).await, events);
}
