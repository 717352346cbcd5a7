//! `longrun serve` as a user runs it: the real binary on an ephemeral loopback port, set up by
//! flags, environment variables and a config file, stopped with SIGTERM. The tests learn the
//! port from the line the server prints on stdout and wait for events, never for time.

use std::path::Path;
use std::process::{ExitStatus, Stdio};

use longrun_proto::sse::{Decoder, SseItem, to_event};
use longrun_proto::{Event, State};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

/// `longrun serve ARGS` with only the given `LONGRUN_*` variables set.
fn serve_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_longrun"));
    cmd.arg("serve");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("LONGRUN_") {
            cmd.env_remove(key);
        }
    }
    // Runs in memory unless a test says otherwise: parallel servers must not share a file.
    cmd.env("LONGRUN_STORE", "memory");
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Read stderr to the end in the background (so the server never blocks on a full pipe).
fn collect(mut child_stderr: tokio::process::ChildStderr) -> JoinHandle<String> {
    tokio::spawn(async move {
        let mut text = String::new();
        let _ = child_stderr.read_to_string(&mut text).await;
        text
    })
}

/// A running `longrun serve`.
struct Serve {
    child: Child,
    base: String,
    _stdout: BufReader<ChildStdout>,
    stderr: JoinHandle<String>,
    http: reqwest::Client,
}

impl Serve {
    async fn start(args: &[&str], env: &[(&str, &str)]) -> Serve {
        Self::start_on("127.0.0.1:0", args, env).await
    }

    async fn start_on(listen: &str, args: &[&str], env: &[(&str, &str)]) -> Serve {
        let mut child = serve_command(&[&["--listen", listen], args].concat(), env)
            .spawn()
            .unwrap();
        let stderr = collect(child.stderr.take().unwrap());
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).await.unwrap();
        let Some(base) = line.trim_end().strip_prefix("longrun listening on ") else {
            let status = child.wait().await.unwrap();
            panic!(
                "no address line but {line:?}; {status}; stderr:\n{}",
                stderr.await.unwrap()
            );
        };
        Serve {
            base: base.to_owned(),
            child,
            _stdout: stdout,
            stderr,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(&self, object: &str, args: Value) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/{object}")))
            .json(&args)
            .send()
            .await
            .unwrap()
    }

    /// Submit and return the run's path.
    async fn submit(&self, object: &str, args: Value) -> String {
        let res = self.post(object, args).await;
        assert_eq!(res.status(), 201, "submit {object}");
        let body: Value = res.json().await.unwrap();
        body["url"].as_str().unwrap().to_owned()
    }

    /// Long-poll a run to its end and return every event.
    async fn events(&self, path: &str) -> Vec<Event> {
        let mut all: Vec<Event> = Vec::new();
        loop {
            let mut req = self.http.get(self.url(path)).query(&[("wait", "60")]);
            if let Some(last) = all.last() {
                req = req.header("last-event-id", last.id.to_string());
            }
            all.extend(
                req.send()
                    .await
                    .unwrap()
                    .json::<Vec<Event>>()
                    .await
                    .unwrap(),
            );
            if all.last().is_some_and(|e| e.state.is_terminal()) {
                return all;
            }
        }
    }

    /// Open an SSE stream on a run.
    async fn stream(&self, path: &str) -> reqwest::Response {
        let res = self
            .http
            .get(self.url(path))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res
    }

    /// Send SIGTERM (through `kill`, as an operator would) and wait for the exit.
    async fn terminate(mut self) -> (ExitStatus, String) {
        sigterm(&self.child);
        let status = self.child.wait().await.unwrap();
        (status, self.stderr.await.unwrap())
    }
}

fn sigterm(child: &Child) {
    let pid = child.id().expect("the server is running").to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
}

/// The `retry:` hint and the events of a whole SSE response.
fn decode_sse(body: &str) -> (Vec<u64>, Vec<Event>) {
    let (mut retries, mut events) = (Vec::new(), Vec::new());
    for item in Decoder::new().feed(body.as_bytes()) {
        match item {
            SseItem::Retry(ms) => retries.push(ms),
            SseItem::Message(msg) => events.push(to_event(&msg).unwrap()),
        }
    }
    (retries, events)
}

/// The `retry` hint a server sends, read from the stream of a finished `probe` run.
async fn retry_hint(serve: &Serve, probe: &str) -> u64 {
    let path = serve.submit(probe, json!({})).await;
    serve.events(&path).await;
    let body = serve.stream(&path).await.text().await.unwrap();
    let (retries, events) = decode_sse(&body);
    assert!(events.last().unwrap().state.is_terminal(), "{body}");
    assert_eq!(retries.len(), 1, "{body}");
    retries[0]
}

/// Run `longrun serve` with settings it must refuse; returns its exit code and stderr.
async fn refused(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut child = serve_command(&[&["--listen", "127.0.0.1:0"], args].concat(), env)
        .spawn()
        .unwrap();
    let stderr = collect(child.stderr.take().unwrap());
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).await.unwrap();
    if !line.is_empty() {
        child.kill().await.unwrap();
        panic!("it started instead of refusing {args:?} {env:?}: {line}");
    }
    let status = child.wait().await.unwrap();
    (status.code().expect("an exit code"), stderr.await.unwrap())
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("longrun.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn running(events: &[Event]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e.state == State::Running)
        .map(|e| &e.value)
        .collect()
}

const GREET_CONFIG: &str = r#"
[exec.greet]
command = ["sh", "-c", "printf 'hello from %s' \"$LONGRUN_OBJECT\" > \"$LONGRUN_RESULT\""]
timeout = "10m"
"#;

#[tokio::test]
async fn exec_objects_from_the_flag_and_from_the_config_file_work() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), GREET_CONFIG);
    // `tr` reads the arguments from stdin and writes them back, upper-cased, as one line.
    let serve = Serve::start(&["--config", &config, "--exec", "shout=tr a-z A-Z"], &[]).await;

    let events = serve
        .events(&serve.submit("shout", json!({"word": "hi"})).await)
        .await;
    assert_eq!(running(&events), vec![&json!({"WORD": "HI"})], "{events:?}");
    assert_eq!(events.last().unwrap().state, State::Success);

    let events = serve.events(&serve.submit("greet", json!({})).await).await;
    let last = events.last().unwrap();
    assert_eq!(
        (last.state, &last.value),
        (State::Success, &json!("hello from greet"))
    );

    let (status, stderr) = serve.terminate().await;
    assert!(status.success(), "{status}; stderr:\n{stderr}");
}

#[tokio::test]
async fn environment_variables_stand_in_for_flags() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), GREET_CONFIG);
    let serve = Serve::start(
        &[],
        &[
            ("LONGRUN_RETRY", "1234ms"),
            ("LONGRUN_CONFIG", &config),
            ("LONGRUN_NO_DEMO", "true"),
        ],
    )
    .await;
    assert_eq!(retry_hint(&serve, "greet").await, 1234);
    let res = serve.post("echo", json!({})).await;
    assert_eq!(res.status(), 404);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["type"], "urn:longrun:problem:unknown-object");
    serve.terminate().await;
}

#[tokio::test]
async fn flags_override_environment_variables_which_override_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "retry = \"3s\"\n");
    let env = [("LONGRUN_RETRY", "1234ms")];
    let cases = [
        (vec!["--config", &config], &env[..0], 3000),
        (vec!["--config", &config], &env[..], 1234),
        (vec!["--config", &config, "--retry", "2s"], &env[..], 2000),
    ];
    for (args, env, expected) in cases {
        let serve = Serve::start(&args, env).await;
        assert_eq!(
            retry_hint(&serve, "echo").await,
            expected,
            "{args:?} {env:?}"
        );
        serve.terminate().await;
    }
}

#[tokio::test]
async fn exec_objects_and_long_poll_bounds_come_from_environment_variables_too() {
    let serve = Serve::start(
        &[],
        &[
            ("LONGRUN_EXEC", "shout=tr a-z A-Z\nsleepy=sleep 3600"),
            ("LONGRUN_POLL_WAIT_DEFAULT", "0s"),
            ("LONGRUN_POLL_WAIT_MAX", "0s"),
        ],
    )
    .await;
    let events = serve
        .events(&serve.submit("shout", json!({"word": "hi"})).await)
        .await;
    assert_eq!(running(&events), vec![&json!({"WORD": "HI"})], "{events:?}");

    // With the longest hold 0s, a long poll on a run that has nothing new answers at once,
    // whatever `wait` asks (the default would hold it 60 s, past the client's timeout).
    let path = serve.submit("sleepy", json!({})).await;
    let res = serve
        .http
        .get(serve.url(&path))
        .query(&[("wait", "60"), ("last_event_id", "0")])
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .expect("an answer before the client's timeout");
    assert_eq!(res.json::<Vec<Event>>().await.unwrap(), vec![]);
    serve.terminate().await;
}

#[tokio::test]
async fn no_demo_removes_the_demo_objects() {
    let with_demo = Serve::start(&[], &[]).await;
    assert_eq!(with_demo.post("echo", json!({})).await.status(), 201);
    with_demo.terminate().await;

    let serve = Serve::start(&["--no-demo"], &[]).await;
    for object in ["echo", "count", "sleep", "fail", "emit", "ephemeral"] {
        let res = serve.post(object, json!({})).await;
        assert_eq!(res.status(), 404, "{object}");
        let problem: Value = res.json().await.unwrap();
        assert_eq!(
            problem["type"], "urn:longrun:problem:unknown-object",
            "{object}"
        );
    }
    let health = serve.http.get(serve.url("/_health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    serve.terminate().await;
}

#[tokio::test]
async fn bad_settings_exit_with_code_2_and_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let unknown_key = write_config(dir.path(), "retention = \"1h\"\nnonsense = 1\n");
    let dir2 = tempfile::tempdir().unwrap();
    let bad_name = write_config(dir2.path(), "[exec.\"bad name\"]\ncommand = \"true\"\n");
    let dir3 = tempfile::tempdir().unwrap();
    let twice = write_config(dir3.path(), "[exec.tool]\ncommand = \"true\"\n");
    let dir4 = tempfile::tempdir().unwrap();
    let zero_events = write_config(dir4.path(), "max_events_per_run = 0\n");
    let cases = vec![
        (
            vec!["--grace", "soon"],
            vec![],
            "invalid value 'soon' for '--grace",
        ),
        (
            vec![],
            vec![("LONGRUN_MAX_ACTIVE_RUNS", "many")],
            "invalid value 'many'",
        ),
        (
            vec!["--keep-alive", "0s"],
            vec![],
            "--keep-alive must be longer than 0s",
        ),
        (
            vec!["--config", "/nonexistent/longrun.toml"],
            vec![],
            "cannot read config file /nonexistent/longrun.toml",
        ),
        (
            vec!["--config", &unknown_key],
            vec![],
            "unknown field `nonsense`",
        ),
        (
            vec!["--config", &bad_name],
            vec![],
            "\"bad name\" is not an object name",
        ),
        (
            vec!["--exec", "bad name=true"],
            vec![],
            "\"bad name\" is not an object name",
        ),
        (vec!["--exec", "tool"], vec![], "write it as NAME="),
        (
            vec!["--exec", "tool=echo 'unterminated"],
            vec![],
            "cannot split command",
        ),
        (vec!["--exec", "tool="], vec![], "the command is empty"),
        // A name defined twice is an error, a demo object's name included.
        (
            vec!["--exec", "echo=true"],
            vec![],
            "exec object echo: a demo object has this name",
        ),
        (
            vec!["--exec", "tool=true", "--exec", "tool=false"],
            vec![],
            "--exec tool: defined twice",
        ),
        (
            vec!["--config", &twice, "--exec", "tool=false"],
            vec![],
            "--exec tool: defined twice",
        ),
        (
            vec!["--config", &twice],
            vec![("LONGRUN_EXEC", "tool=false")],
            "--exec tool: defined twice",
        ),
        (
            vec!["--poll-wait-default", "90s"],
            vec![],
            "--poll-wait-default (1m 30s) must not be longer than --poll-wait-max (1m)",
        ),
        (
            vec![],
            vec![("LONGRUN_MAX_ACTIVE_RUNS", "0")],
            "--max-active-runs must be more than 0 (LONGRUN_MAX_ACTIVE_RUNS",
        ),
        (
            vec!["--config", &zero_events],
            vec![],
            "--max-events-per-run must be at least 2",
        ),
    ];
    for (args, env, message) in cases {
        let (code, stderr) = refused(&args, &env).await;
        assert_eq!(code, 2, "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains(message),
            "{args:?} {env:?}: {message:?} not in:\n{stderr}"
        );
    }
}

#[tokio::test]
async fn sigterm_ends_followed_runs_with_reason_shutdown_and_exits_0() {
    let serve = Serve::start(&["--grace", "10m"], &[]).await;
    let path = serve.submit("sleep", json!({"ms": 3_600_000})).await;
    // The stream's headers arrived: the server follows this run for us from here on.
    let stream = serve.stream(&path).await;

    let (status, stderr) = serve.terminate().await;
    let body = stream.text().await.expect("the stream ends cleanly");
    let (retries, events) = decode_sse(&body);
    assert_eq!(retries, vec![1000]);
    assert_eq!(
        events,
        vec![
            Event {
                id: 0,
                state: State::Queued,
                value: Value::Null
            },
            Event {
                id: 1,
                state: State::Canceled,
                value: json!({"reason": "shutdown"})
            },
        ],
        "{body}"
    );
    assert!(status.success(), "{status}; stderr:\n{stderr}");
}

#[tokio::test]
async fn sigterm_right_after_the_address_line_still_shuts_down_cleanly() {
    // The signal handler must be in place before the address is printed: whoever reads the
    // address may stop the server at once.
    let serve = Serve::start(&[], &[]).await;
    let (status, stderr) = serve.terminate().await;
    assert!(status.success(), "{status}; stderr:\n{stderr}");
}

/// What a client sees of an ended run: its SSE body, its long-poll body, its HEAD headers.
async fn served(s: &Serve, path: &str) -> (Vec<u8>, Vec<u8>, Option<String>, Option<String>) {
    let sse = s
        .http
        .get(s.url(path))
        .header("accept", "text/event-stream");
    let sse = sse.send().await.unwrap().bytes().await.unwrap().to_vec();
    let poll = s
        .http
        .get(s.url(&format!("{path}?wait=0")))
        .send()
        .await
        .unwrap();
    let poll = poll.bytes().await.unwrap().to_vec();
    let head = s.http.head(s.url(path)).send().await.unwrap();
    let header = |name: &str| {
        head.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    (
        sse,
        poll,
        header("longrun-state"),
        header("longrun-last-event-id"),
    )
}

/// `kill -9`, then a restart on the same SQLite file: every ended run is served byte for byte
/// as before, a dropped run answers 410 again, and a run that was running ends with one
/// `error` event saying so, which its follower, connected across the restart, receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_serves_its_runs_again_from_its_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("runs.db").display());
    let args = ["--store", store.as_str(), "--retry", "10ms"];
    let mut first = Serve::start(&args, &[]).await;
    let count = first.submit("count", json!({"n": 3})).await;
    let echo = first
        .submit("echo", json!({"a": [1.5, "x\ny", null]}))
        .await;
    let ephemeral = first.submit("ephemeral", json!({})).await;
    for path in [&count, &echo] {
        first.events(path).await;
    }
    // Followed to its end in one stream: with retention 0 it is dropped as it ends.
    let stream = first
        .http
        .get(first.url(&ephemeral))
        .header("accept", "text/event-stream");
    let body = stream.send().await.unwrap().text().await.unwrap();
    assert!(body.contains("event: success"), "{body}");
    let gone = first.http.get(first.url(&ephemeral)).send().await.unwrap();
    assert_eq!(
        gone.status(),
        410,
        "a run of retention 0 is dropped at its end"
    );
    let before = [served(&first, &count).await, served(&first, &echo).await];

    let sleep = first.submit("sleep", json!({"ms": 3_600_000})).await;
    let client = longrun::Client::builder(first.base.as_str())
        .reconnect(longrun::Reconnect {
            max_attempts: 1000,
            initial_delay: std::time::Duration::from_millis(20),
            max_delay: std::time::Duration::from_millis(100),
        })
        .build()
        .unwrap();
    let run = longrun::Run::from_url(&first.url(&sleep)).unwrap();
    let mut follower = client.follow(&run);
    let queued = follower.next_raw_batch(1).await.unwrap();
    assert_eq!((queued[0].id, queued[0].state), (0, State::Queued));

    first.child.start_kill().unwrap(); // SIGKILL: no shutdown, no flush
    first.child.wait().await.unwrap();
    let addr = first.base.trim_start_matches("http://").to_owned();
    let second = Serve::start_on(&addr, &args, &[]).await;

    let after = [served(&second, &count).await, served(&second, &echo).await];
    assert!(
        before == after,
        "ended runs are served byte for byte as before the crash"
    );
    let gone = second
        .http
        .get(second.url(&ephemeral))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 410, "tombstones survive the restart");

    let rest = follower.next_raw_batch(16).await.unwrap();
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!((rest[0].id, rest[0].state), (1, State::Error));
    let value: Value = serde_json::from_str(rest[0].value.get()).unwrap();
    assert_eq!(value["reason"], "interrupted", "{value}");
    assert!(
        follower.next_raw_batch(16).await.unwrap().is_empty(),
        "the follow completes"
    );
    let events = second.events(&sleep).await;
    assert_eq!(events.len(), 2);
}

/// One server per SQLite file: a second one on the same file refuses to start and says why.
#[tokio::test]
async fn a_second_server_on_the_same_sqlite_file_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("runs.db").display());
    let _first = Serve::start(&["--store", store.as_str()], &[]).await;
    let out = serve_command(&["--listen", "127.0.0.1:0", "--store", store.as_str()], &[])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another longrun server uses this file"),
        "{stderr}"
    );
}

#[path = "../../longrun-server/tests/common/postgres.rs"]
mod postgres;

/// Two `longrun serve` replicas on one Postgres database, with leases of `lease`: short only
/// where a test waits for one to run out (a busy machine must not let a live one lapse).
async fn replicas(test: &str, lease: &str, extra: &[&str]) -> Option<(Serve, Serve)> {
    let url = postgres::database(test).await?;
    Some(replicas_on(&url, lease, extra).await)
}

/// [`replicas`] on the database of `url`.
async fn replicas_on(url: &str, lease: &str, extra: &[&str]) -> (Serve, Serve) {
    let store = format!("{url}?lease={lease}");
    let args = [&["--store", store.as_str(), "--retry", "10ms"], extra].concat();
    (
        Serve::start(&args, &[]).await,
        Serve::start(&args, &[]).await,
    )
}

fn assert_dense(events: &[Event], what: &str) {
    let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
    let want: Vec<u64> = (0..events.len() as u64).collect();
    assert_eq!(ids, want, "{what}: each event exactly once, in order");
}

/// A run submitted on one replica is followed on the other by SSE and by long polling (each
/// event exactly once), answers HEAD there, and is canceled from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_postgres_serve_each_others_runs() {
    let Some((a, b)) = replicas("replicas serve each other's runs", "15s", &[]).await else {
        return;
    };
    let count = a.submit("count", json!({"n": 30, "interval_ms": 10})).await;
    let (sse, polled) = tokio::join!(
        async { decode_sse(&b.stream(&count).await.text().await.unwrap()).1 },
        b.events(&count)
    );
    let on_a = a.events(&count).await;
    assert_eq!(on_a.len(), 32, "queued, 30 running, success");
    assert_dense(&sse, "SSE on B");
    assert_dense(&polled, "long polling on B");
    assert_eq!(sse, on_a, "B's stream is A's run");
    assert_eq!(polled, on_a, "B's long polls are A's run");

    let head = b.http.head(b.url(&count)).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let header = |name: &str| head.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(header("longrun-state"), "success");
    assert_eq!(header("longrun-last-event-id"), "31");

    let sleep = a.submit("sleep", json!({"ms": 3_600_000})).await;
    let canceled = b.http.delete(b.url(&sleep)).send().await.unwrap();
    assert_eq!(
        canceled.status(),
        202,
        "a cancel on B of a run executing on A"
    );
    let (on_a, on_b) = tokio::join!(a.events(&sleep), b.events(&sleep));
    let last = on_a.last().unwrap();
    assert_eq!(last.state, State::Canceled, "{on_a:?}");
    assert_eq!(last.value["reason"], "client");
    assert_eq!(on_a, on_b);
    let again = b.http.delete(b.url(&sleep)).send().await.unwrap();
    assert_eq!(
        again.status(),
        202,
        "DELETE stays idempotent on every replica"
    );
    let ended = b.http.delete(b.url(&count)).send().await.unwrap();
    assert_eq!(ended.status(), 409, "a run that ended in success");

    let unknown = "/count/0f8fad5b-d9cb-469f-a165-70867728950e";
    let missing = b.http.get(b.url(unknown)).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    // Runs B never looked at, then A stops (SIGTERM writes everything): B serves them from
    // the database alone, and a dropped run (retention 0) is a tombstone there too.
    let echo = a.submit("echo", json!({"x": [1, "two"]})).await;
    let ephemeral = a.submit("ephemeral", json!({})).await;
    let echoed = a.events(&echo).await;
    let body = a.stream(&ephemeral).await.text().await.unwrap();
    assert!(body.contains("event: success"), "{body}");
    let (status, stderr) = a.terminate().await;
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(b.events(&echo).await, echoed);
    for res in [
        b.http.get(b.url(&ephemeral)).send().await.unwrap(),
        b.http.head(b.url(&ephemeral)).send().await.unwrap(),
    ] {
        assert_eq!(
            res.status(),
            410,
            "a tombstone answers 410 on every replica"
        );
    }
}

/// `kill -9` of the replica executing a run: the other ends it once the lease runs out, and
/// the run's followers there complete; the run feeds have its end once (spec §28.5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_ends_the_runs_of_a_killed_replica() {
    let Some(db) = postgres::database("a survivor ends a killed replica's runs").await else {
        return;
    };
    let (mut a, b) = replicas_on(&db, "1s", &[]).await;
    let sleep = a.submit("sleep", json!({"ms": 3_600_000})).await;
    let (url, http) = (b.url(&sleep), b.http.clone());
    let sse = tokio::spawn(async move {
        let res = http
            .get(url)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        decode_sse(&res.text().await.unwrap()).1
    });
    // B holds the run as a mirror (it answered the follow) before A goes.
    let queued = b
        .http
        .get(b.url(&format!("{sleep}?wait=0")))
        .send()
        .await
        .unwrap();
    assert_eq!(queued.json::<Vec<Event>>().await.unwrap().len(), 1);
    a.child.start_kill().unwrap(); // SIGKILL: no shutdown, the lease is never renewed
    a.child.wait().await.unwrap();
    let polled = b.events(&sleep).await;
    let events = sse.await.unwrap();
    assert_eq!(events, polled);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1].state, State::Error);
    assert_eq!(events[1].value["reason"], "interrupted", "{:?}", events[1]);
    let head = b.http.head(b.url(&sleep)).send().await.unwrap();
    assert_eq!(head.headers()["longrun-state"], "error");
    // Committed with the end: the run's `queued` (by A) and its end (by B), once each.
    let (client, conn) = tokio_postgres::connect(&db, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let id = sleep.rsplit('/').next().unwrap();
    for topic in ["_runs", "_runs.sleep"] {
        let feed: Vec<(i64, String)> = client
            .query(
                "SELECT n, data FROM longrun.publications WHERE ns = '' AND topic = $1 \
                 ORDER BY n",
                &[&topic],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let want = [(0, "queued"), (1, "error")].map(|(n, state)| {
            let data = json!({"object": "sleep", "id": id, "state": state});
            (n, data.to_string())
        });
        assert_eq!(feed, want, "{topic}");
    }
}

/// `max_active_runs` is one limit for all replicas of a database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_active_run_limit() {
    let Some((a, b)) = replicas(
        "replicas share max_active_runs",
        "15s",
        &["--max-active-runs", "2"],
    )
    .await
    else {
        return;
    };
    let first = a.submit("sleep", json!({"ms": 3_600_000})).await;
    b.submit("sleep", json!({"ms": 3_600_000})).await;
    for s in [&a, &b] {
        let refused = s.post("sleep", json!({"ms": 1})).await;
        assert_eq!(
            refused.status(),
            503,
            "two runs are active across the replicas"
        );
        assert!(refused.headers().contains_key("retry-after"));
    }
    let canceled = b.http.delete(b.url(&first)).send().await.unwrap();
    assert_eq!(canceled.status(), 202);
    a.events(&first).await;
    b.submit("echo", json!({})).await;
}

/// Without --auth, `longrun serve` refuses a non-loopback address unless told it is fine.
#[tokio::test]
async fn an_open_server_refuses_a_public_address() {
    let out = serve_command(&["--listen", "0.0.0.0:0"], &[])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("without --auth"), "{stderr}");
    assert!(stderr.contains("--allow-unauthenticated"), "{stderr}");
    let open = Serve::start_on("0.0.0.0:0", &["--allow-unauthenticated"], &[]).await;
    let (status, stderr) = open.terminate().await;
    assert!(status.success(), "{stderr}");
}

fn auth_file(tokens: &[(&str, &str)]) -> String {
    tokens
        .iter()
        .map(|(tenant, token)| {
            format!(
                "[[tenant]]\nname = \"{tenant}\"\n[[tenant.token]]\nhash = \"{}\"\nscopes = [\"submit\", \"read\", \"cancel\"]\n",
                longrun_server::auth::token_hash(token)
            )
        })
        .collect()
}

/// `--auth FILE`: a token made by `longrun token new` gets in; SIGHUP reads the file again,
/// and a token taken out of it stops working while the rest go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_an_auth_file_reloaded_on_sighup() {
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_longrun"))
        .args(["token", "new"])
        .output()
        .unwrap();
    assert!(made.status.success());
    let printed = String::from_utf8(made.stdout).unwrap();
    let token = printed.lines().next().unwrap().to_owned();
    let snippet: String = printed.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert!(
        !snippet.contains(&token),
        "the lines to paste never hold the token"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.toml");
    std::fs::write(
        &path,
        format!(
            "[[tenant]]\nname = \"acme\"\n{snippet}\n{}",
            auth_file(&[("beta", "lrt_beta")])
        ),
    )
    .unwrap();
    let mut child = serve_command(
        &["--listen", "127.0.0.1:0", "--auth", path.to_str().unwrap()],
        &[],
    )
    .spawn()
    .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).await.unwrap();
    let base = line
        .trim_end()
        .strip_prefix("longrun listening on ")
        .unwrap()
        .to_owned();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let http = reqwest::Client::new();
    let submit = |token: &str| {
        http.post(format!("{base}/echo"))
            .bearer_auth(token)
            .json(&json!({}))
            .send()
    };
    assert_eq!(submit(&token).await.unwrap().status(), 201);
    assert_eq!(submit("lrt_beta").await.unwrap().status(), 201);
    let anonymous = http
        .post(format!("{base}/echo"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(
        anonymous.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );

    std::fs::write(&path, auth_file(&[("beta", "lrt_beta")])).unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    while let Some(line) = stderr.next_line().await.unwrap() {
        if line.contains("auth file reloaded") {
            break;
        }
    }
    assert_eq!(
        submit(&token).await.unwrap().status(),
        401,
        "a removed token"
    );
    assert_eq!(submit("lrt_beta").await.unwrap().status(), 201);
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

const HOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

type Received = tokio::sync::mpsc::UnboundedReceiver<(Vec<(String, String)>, Vec<u8>)>;

/// A hook receiver: its URL, and each request's headers and body (answered 204).
async fn hook_receiver() -> (String, Received) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, got) = tokio::sync::mpsc::unbounded_channel::<(Vec<(String, String)>, Vec<u8>)>();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let mut headers = Vec::new();
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).await.unwrap();
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.trim_end().split_once(": ") {
                        headers.push((k.to_ascii_lowercase(), v.to_owned()));
                    }
                }
                let len = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .map_or(0, |(_, v)| v.parse().unwrap());
                let mut body = vec![0; len];
                reader.read_exact(&mut body).await.unwrap();
                let mut stream = reader.into_inner();
                let answer = b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n";
                stream.write_all(answer).await.unwrap();
                let _ = tx.send((headers, body));
            });
        }
    });
    (hook, got)
}

/// The next delivery, checked as a receiver would (signature, timestamp): its payload.
async fn next_delivery(got: &mut Received) -> Value {
    let (headers, body) = tokio::time::timeout(std::time::Duration::from_secs(60), got.recv())
        .await
        .expect("the hook is delivered")
        .unwrap();
    let pairs = headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    longrun::webhook::verify(HOOK_SECRET, pairs, &body, longrun::webhook::TOLERANCE).unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// Submit a hooked `sleep` of an hour: its URL.
async fn hooked_sleep(serve: &Serve, hook: &str) -> String {
    let res = serve
        .http
        .post(serve.url("/sleep"))
        .header("longrun-hook", hook)
        .json(&json!({"ms": 3_600_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    res.json::<Value>().await.unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn assert_interrupted(payload: &Value, run: &str) {
    assert_eq!(payload["type"], "run.ended");
    assert_eq!(payload["data"]["url"], run);
    assert_eq!(payload["data"]["state"], "error");
    assert_eq!(payload["data"]["error"]["reason"], "interrupted");
}

/// A hooked run the server was running when it was killed gets its `run.ended` after the
/// restart (its `interrupted` end), signed (spec §26.7): the hook is kept in the SQLite file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_delivers_the_hook_of_an_interrupted_run_after_the_restart() {
    let (hook, mut got) = hook_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("runs.db").display());
    let args = [
        "--store",
        store.as_str(),
        "--hook-secret",
        HOOK_SECRET,
        "--hook-allow",
        "127.0.0.1",
    ];
    let mut first = Serve::start(&args, &[]).await;
    let sleep = hooked_sleep(&first, &hook).await;
    // Its 201 is committed after everything the server wrote before (the hook among it).
    first.submit("echo", json!({})).await;
    first.child.start_kill().unwrap(); // SIGKILL: no shutdown, no flush
    first.child.wait().await.unwrap();
    let _second = Serve::start(&args, &[]).await;
    assert_interrupted(&next_delivery(&mut got).await, &sleep);
}

/// `kill -9` of the replica executing a hooked run: the survivor's reaper ends the run and
/// enqueues its `run.ended` in the same transaction, and a replica delivers it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_delivers_the_hook_of_a_killed_replicas_run() {
    let (hook, mut got) = hook_receiver().await;
    let flags = ["--hook-secret", HOOK_SECRET, "--hook-allow", "127.0.0.1"];
    let Some((mut a, b)) =
        replicas("a survivor delivers a killed replica's hook", "1s", &flags).await
    else {
        return;
    };
    let sleep = hooked_sleep(&a, &hook).await;
    a.child.start_kill().unwrap(); // SIGKILL: its watcher of the run dies with it
    a.child.wait().await.unwrap();
    assert_interrupted(&next_delivery(&mut got).await, &sleep);
    let hooks: Value = b
        .http
        .get(b.url(&format!("{sleep}/hooks")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let deliveries = hooks["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "one run.ended, no watch row: {hooks}");
    assert_eq!(deliveries[0]["type"], "run.ended");
}

/// `--log-format json`: every line on stderr is a JSON object, and a run's lines carry its
/// id (the driver's span); the setting comes from the environment and the config file too.
#[tokio::test]
async fn json_logs_are_one_object_per_line_and_carry_the_run_id() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "log_format = \"json\"\n");
    let debug = ("LONGRUN_LOG", "longrun_server=debug");
    for (args, env) in [
        (vec!["--log-format", "json"], vec![debug]),
        (vec![], vec![debug, ("LONGRUN_LOG_FORMAT", "json")]),
        (vec!["--config", config.as_str()], vec![debug]),
    ] {
        let serve = Serve::start(&args, &env).await;
        let path = serve.submit("echo", json!({"a": 1})).await;
        serve.events(&path).await;
        let id = path.rsplit('/').next().unwrap().to_owned();
        let (status, stderr) = serve.terminate().await;
        assert!(status.success(), "{status}; stderr:\n{stderr}");
        let lines: Vec<Value> = stderr
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect();
        assert!(
            lines
                .iter()
                .all(|l| l["level"].is_string() && l["fields"].is_object())
        );
        let of_run: Vec<&Value> = lines.iter().filter(|l| l["span"]["run"] == id).collect();
        assert!(
            of_run.iter().any(|l| l["fields"]["message"] == "run ended"),
            "{args:?} {env:?}: no line of run {id}:\n{stderr}"
        );
        assert!(of_run.iter().all(|l| l["span"]["object"] == "echo"));
    }
    // Text stays the default.
    let serve = Serve::start(&[], &[debug]).await;
    let path = serve.submit("echo", json!({})).await;
    serve.events(&path).await;
    let (_, stderr) = serve.terminate().await;
    let id = path.rsplit('/').next().unwrap();
    assert!(
        stderr.lines().any(|l| l.contains(&format!("run={id}"))),
        "{stderr}"
    );
    assert!(serde_json::from_str::<Value>(stderr.lines().next().unwrap()).is_err());
}
