//! Runs the conformance scenarios of `spec/conformance/` through the Rust client — once with the
//! async `longrun::Client`, once with `longrun::blocking::Client` — against the reference server
//! started in-process. This is the SDK runner of `spec/conformance/README.md`: each op is a
//! client call, `http` steps are skipped (and so are the steps on runs only they saved), and a
//! failing scenario is named by file, description, step index and client flavour.
//!
//! What the client API cannot show is not checked, and only that: the state of a submit reply
//! (`submit` returns a `Run`, whose object is checked) and the state of an `accepted` cancel
//! (`CancelOutcome::Accepted` carries none; an expected `canceled` is checked with `status()`,
//! which cannot race since the run has ended, while `queued` or `running` could already have
//! become `canceled` by the time a second request looks). Validating the files against
//! `schema.json` is left to the server's runner (`crates/longrun-server/tests/conformance.rs`);
//! this one reads them strictly and makes the checks a schema cannot.

mod common;
#[path = "../../longrun-server/tests/scenarios/mod.rs"]
mod scenarios;

use scenarios::*;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use longrun::blocking::Next;
use longrun::{CancelOutcome, ErrorKind, Event, FollowOptions, Run, RunStatus, State, Transport};
use serde_json::{Value, json};
use tokio::time::Instant;

/// Scenarios this client is known to fail, by flavour and description. A listed scenario that
/// passes (or is skipped) fails the run, and so does a description that matches no scenario:
/// when a fix lands, its entry must go.
const KNOWN_FAILURES: &[(Flavour, &str)] = &[];

/// The longest any step may take; no step of a passing scenario comes near it.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// Scenarios in flight at once, per flavour: enough to overlap the waiting, few enough for a
/// small machine that also runs the other flavour and the server.
const CONCURRENCY: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    Async,
    Blocking,
}

impl Flavour {
    fn name(self) -> &'static str {
        match self {
            Flavour::Async => "async",
            Flavour::Blocking => "blocking",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loading, and the checks a schema cannot make (README.md, "Runners", 1).

/// Every scenario file (by file name), checked; panics with every problem found.
fn load() -> Vec<(String, ScenarioFile)> {
    scenarios::load(|_, _| Vec::new(), lint)
}

fn lint(scenario: &Scenario) -> Vec<String> {
    let mut problems = Vec::new();
    let mut saved: HashSet<&str> = HashSet::new();
    for (i, step) in scenario.steps.iter().enumerate() {
        let mut report = |msg: String| problems.push(format!("steps[{i}] ({}): {msg}", step.op()));
        if let Some(name) = step.run_ref().and_then(RunRef::name) {
            if !saved.contains(name) {
                report(format!("the run {name:?} is not saved by an earlier step"));
            }
        }
        if let Step::Follow {
            since,
            until,
            expect,
            ..
        } = step
        {
            let first = since.map_or(0, |c| c + 1);
            let (events, first) = match expect {
                FollowExpect::Events { events } => (events, first),
                FollowExpect::Tail { count, tail } => {
                    let skipped = count.checked_sub(tail.len()).unwrap_or_else(|| {
                        report("count is smaller than the tail".into());
                        0
                    });
                    (tail, first + skipped as u64)
                }
                FollowExpect::Error { .. } => continue,
            };
            if let Some(at) = events.iter().zip(first..).position(|(e, id)| e.id != id) {
                report(format!(
                    "expected ids must be dense from {first}; index {at} breaks it"
                ));
            }
            if events.iter().rev().skip(1).any(|e| e.state.is_terminal()) {
                report("only the last expected event may be terminal".into());
            }
            match (until, events.last()) {
                (Some(until), last) if last.is_none_or(|e| e.id != *until) => {
                    report(format!(
                        "the events must end with the event {until} (until)"
                    ));
                }
                (None, Some(last)) if !last.state.is_terminal() => {
                    report("the events must end with a terminal event".into());
                }
                _ => {}
            }
        }
        if let Some(name) = step.save() {
            if !saved.insert(name) {
                report(format!("the name {name:?} is saved twice"));
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// Comparing and showing values (README.md, "Comparing values").

fn events_eq(a: &[Event], b: &[Event]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(a, b)| a.id == b.id && a.state == b.state && json_eq(&a.value, &b.value))
}

fn show_events(events: &[Event]) -> String {
    let shown: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(e).expect("events serialize"))
        .collect();
    format!("[{}]", shown.join(", "))
}

fn show_error(err: &longrun::Error) -> String {
    let mut shown = err.kind().to_string();
    if let Some(status) = err.status() {
        shown.push_str(&format!(" {status}"));
    }
    if let Some(problem) = err.problem() {
        shown.push_str(&format!(" {}", problem.type_uri));
    }
    if let Some(value) = err.value() {
        shown.push_str(&format!(" {value}"));
    }
    format!("{shown} ({err})")
}

fn show_expected(error: &ErrorExpect) -> String {
    let mut shown = error.kind.name().to_owned();
    if let Some(status) = error.status {
        shown.push_str(&format!(" {status}"));
    }
    if let Some(slug) = &error.problem {
        shown.push_str(&format!(" {slug}"));
    }
    if let Some(value) = &error.value {
        shown.push_str(&format!(" {value}"));
    }
    shown
}

/// Check an error against its expectation: `kind` and `value`, and `status` and `problem`
/// when given (the client keeps both for every answer that had them).
fn check_error(expect: &ErrorExpect, err: &longrun::Error) -> Result<(), String> {
    let problem = expect
        .problem
        .as_ref()
        .map(|slug| format!("{}{slug}", longrun_proto::Problem::TYPE_PREFIX));
    let same = err.kind().as_str() == expect.kind.name()
        && expect
            .value
            .as_ref()
            .is_none_or(|v| err.value().is_some_and(|got| json_eq(v, got)))
        && expect.status.is_none_or(|s| err.status() == Some(s))
        && problem.is_none_or(|uri| err.problem().is_some_and(|p| p.type_uri == uri));
    if same {
        Ok(())
    } else {
        Err(format!(
            "expected the error {}, got {}",
            show_expected(expect),
            show_error(err)
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// The two clients behind one set of verbs. Blocking calls run on a thread of their own: the
// blocking client owns a runtime and must not be called (or dropped) inside an async context.

#[derive(Clone)]
enum Api {
    Async(longrun::Client),
    Blocking(longrun::blocking::Client),
}

/// Run a blocking call on a fresh thread. Not `spawn_blocking`: a call that never returns
/// would then keep the test's runtime from shutting down, and hide the failure report.
async fn unblock<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(call());
    });
    rx.await
        .expect("a blocking client call panicked (its message is above)")
}

/// What a follow step saw: the events in order, then how it ended.
#[derive(Default)]
struct Followed {
    events: Vec<Event>,
    error: Option<longrun::Error>,
    timed_out: bool,
}

impl Followed {
    /// Take one item of the follow; `true` when the step stops here.
    fn take(&mut self, item: longrun::Result<Event>, until: Option<u64>) -> bool {
        match item {
            Ok(event) => {
                let stop = until == Some(event.id);
                self.events.push(event);
                stop
            }
            Err(err) => {
                self.error = Some(err);
                true
            }
        }
    }

    /// Note that the deadline passed; the step stops here.
    fn timed_out(&mut self) -> bool {
        self.timed_out = true;
        true
    }
}

impl Api {
    async fn submit(&self, object: &str, args: Value) -> longrun::Result<Run> {
        match self {
            Api::Async(c) => c.submit(object, args).await,
            Api::Blocking(c) => {
                let (c, object) = (c.clone(), object.to_owned());
                unblock(move || c.submit(&object, args)).await
            }
        }
    }

    /// One call on a run through this client: `call_async` or, on a thread of its own,
    /// `call_blocking`.
    async fn on_run<T: Send + 'static>(
        &self,
        run: &Run,
        call_async: impl AsyncFnOnce(&longrun::Client, &Run) -> T,
        call_blocking: impl FnOnce(&longrun::blocking::Client, &Run) -> T + Send + 'static,
    ) -> T {
        match self {
            Api::Async(c) => call_async(c, run).await,
            Api::Blocking(c) => {
                let (c, run) = (c.clone(), run.clone());
                unblock(move || call_blocking(&c, &run)).await
            }
        }
    }

    /// Follow until the terminal event (then to the end of the stream), the event `until`,
    /// an error, or the deadline.
    async fn follow(
        &self,
        run: &Run,
        options: FollowOptions,
        until: Option<u64>,
        deadline: Instant,
    ) -> Followed {
        let blocking_options = options.clone();
        let call_async = async |c: &longrun::Client, run: &Run| {
            let (mut events, mut followed) = (c.follow_with(run, options), Followed::default());
            loop {
                let stop = match tokio::time::timeout_at(deadline, events.next()).await {
                    Err(_) => followed.timed_out(),
                    Ok(None) => true,
                    Ok(Some(item)) => followed.take(item, until),
                };
                if stop {
                    return followed;
                }
            }
        };
        let deadline = deadline.into_std();
        let call_blocking = move |c: &longrun::blocking::Client, run: &Run| {
            let (mut events, mut followed) =
                (c.follow_with(run, blocking_options), Followed::default());
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let stop = match events.next_timeout(left) {
                    Next::Pending => followed.timed_out(),
                    Next::End => true,
                    Next::Item(item) => followed.take(item, until),
                };
                if stop {
                    return followed;
                }
            }
        };
        self.on_run(run, call_async, call_blocking).await
    }

    async fn exists(&self, run: &Run) -> longrun::Result<bool> {
        self.on_run(
            run,
            async |c, run| c.exists(run).await,
            |c, run| c.exists(run),
        )
        .await
    }

    async fn status(&self, run: &Run) -> longrun::Result<RunStatus> {
        self.on_run(
            run,
            async |c, run| c.status(run).await,
            |c, run| c.status(run),
        )
        .await
    }

    async fn cancel(&self, run: &Run) -> longrun::Result<CancelOutcome> {
        self.on_run(
            run,
            async |c, run| c.cancel(run).await,
            |c, run| c.cancel(run),
        )
        .await
    }

    async fn wait(&self, run: &Run, timeout: Option<Duration>) -> longrun::Result<Value> {
        let call_async = async |c: &longrun::Client, run: &Run| c.wait(run, timeout).await;
        self.on_run(run, call_async, move |c, run| c.wait(run, timeout))
            .await
    }
}

// ---------------------------------------------------------------------------------------------
// Running scenarios.

struct Runner<'a> {
    api: &'a Api,
    base: &'a str,
    saved: HashMap<String, Run>,
    /// Names saved by skipped `http` steps: the steps on these runs are skipped too.
    unsaved: HashSet<String>,
    /// Every run the scenario created, to cancel after a failure.
    created: Vec<Run>,
}

/// How a scenario went for one flavour.
enum Verdict {
    Passed,
    /// Every step was skipped: nothing was checked.
    Skipped,
    Failed(String),
}

/// `f` within the step's deadline.
async fn within<T>(deadline: Instant, f: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout_at(deadline, f)
        .await
        .map_err(|_| format!("no outcome within {} s", STEP_TIMEOUT.as_secs()))
}

impl Runner<'_> {
    /// The run a step names; `None` when it names a run only a skipped step saved.
    fn resolve(&self, run: &RunRef) -> Result<Option<Run>, String> {
        if run.name().is_some_and(|name| self.unsaved.contains(name)) {
            return Ok(None);
        }
        let found = |name: &str| {
            self.saved
                .get(name)
                .ok_or_else(|| format!("the run {name:?} is not saved"))
        };
        let run = match run {
            RunRef::Saved(name) => found(name)?.clone(),
            RunRef::Literal { object, id } => Run::new(self.base, object, id)
                .map_err(|err| format!("the client refuses the run {object}/{id}: {err}"))?,
            RunRef::Like { like, object } => {
                let id = found(like)?.id().to_string();
                Run::new(self.base, object, &id)
                    .map_err(|err| format!("the client refuses the run {object}/{id}: {err}"))?
            }
        };
        Ok(Some(run))
    }

    /// Run one step; `Ok(false)` when it was skipped.
    async fn step(&mut self, step: &Step) -> Result<bool, String> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        let api = self.api;
        let run = match step.run_ref().map(|r| self.resolve(r)).transpose()? {
            Some(None) => return Ok(false),
            Some(Some(run)) => Some(run),
            None => None,
        };
        let error = step.error();
        match (step, run) {
            (Step::Http { save, .. }, _) => {
                self.unsaved.extend(save.clone());
                return Ok(false);
            }
            (
                Step::Submit {
                    object, args, save, ..
                },
                _,
            ) => {
                let args = args.clone().map_or_else(|| json!({}), Value::Object);
                let result = within(deadline, api.submit(object, args)).await?;
                self.created.extend(result.as_ref().ok().cloned());
                if let Some(run) = outcome(result, error, Run::to_string)? {
                    if run.object() != object {
                        return Err(format!("submitted to {object}, got the run {run}"));
                    }
                    self.saved.extend(save.clone().map(|name| (name, run)));
                }
            }
            (
                Step::Follow {
                    transport,
                    since,
                    until,
                    expect,
                    ..
                },
                Some(run),
            ) => {
                let transport = match transport {
                    StepTransport::Sse => Transport::Sse,
                    StepTransport::Poll => Transport::Poll,
                };
                let options = FollowOptions {
                    since: *since,
                    transport: Some(transport),
                };
                check_followed(&api.follow(&run, options, *until, deadline).await, expect)?;
            }
            (Step::Exists { expect, .. }, Some(run)) => {
                let result = within(deadline, api.exists(&run)).await?;
                let (
                    Some(exists),
                    ExistsExpect::Exists {
                        exists: expected,
                        state,
                        last_event_id,
                    },
                ) = (outcome(result, error, bool::to_string)?, expect)
                else {
                    return Ok(true);
                };
                if exists != *expected {
                    return Err(format!("expected exists = {expected}, got {exists}"));
                }
                if state.is_some() || last_event_id.is_some() {
                    let status = within(deadline, api.status(&run))
                        .await?
                        .map_err(|err| format!("status after exists: {}", show_error(&err)))?;
                    if state.is_some_and(|s| s != status.state)
                        || last_event_id.is_some_and(|id| id != status.last_event_id)
                    {
                        return Err(format!(
                            "expected {} with last event {}, got {} with last event {}",
                            state.map_or("any state".into(), |s| s.to_string()),
                            last_event_id.map_or("any".into(), |id| id.to_string()),
                            status.state,
                            status.last_event_id
                        ));
                    }
                }
            }
            (Step::Cancel { expect, .. }, Some(run)) => {
                let result = within(deadline, api.cancel(&run)).await?;
                let (
                    Some(got),
                    CancelExpect::Outcome {
                        outcome: expected,
                        state,
                    },
                ) = (outcome(result, error, |o| format!("{o:?}"))?, expect)
                else {
                    return Ok(true);
                };
                match (got, expected, state) {
                    (CancelOutcome::Accepted, Outcome::Accepted, Some(State::Canceled)) => {
                        // A terminal state stays put, so it can be checked after the reply;
                        // queued or running cannot (see the module docs).
                        let status = within(deadline, api.status(&run))
                            .await?
                            .map_err(|err| format!("status after cancel: {}", show_error(&err)))?;
                        if status.state != State::Canceled {
                            return Err(format!("accepted, then the run is {}", status.state));
                        }
                    }
                    (CancelOutcome::Accepted, Outcome::Accepted, _) => {}
                    (CancelOutcome::AlreadyEnded(got), Outcome::Ended, Some(state))
                        if got == *state => {}
                    _ => {
                        return Err(format!(
                            "expected {expected:?}{}, got {got:?}",
                            state.map_or(String::new(), |s| format!(" ({s})"))
                        ));
                    }
                }
            }
            (
                Step::Wait {
                    timeout_ms, expect, ..
                },
                Some(run),
            ) => {
                let timeout = timeout_ms.map(Duration::from_millis);
                let result = within(deadline, api.wait(&run, timeout)).await?;
                if let (Some(got), WaitExpect::Value { value }) =
                    (outcome(result, error, Value::to_string)?, expect)
                {
                    if !json_eq(&got, value) {
                        return Err(format!("expected the value {value}, got {got}"));
                    }
                }
            }
            (_, None) => unreachable!("every op but submit and http names a run"),
        }
        Ok(true)
    }
}

/// What a call gave when it was expected to succeed (`error` is `None`); `None` when it failed
/// as `error` expects.
fn outcome<T>(
    result: longrun::Result<T>,
    error: Option<&ErrorExpect>,
    show: impl Fn(&T) -> String,
) -> Result<Option<T>, String> {
    match (result, error) {
        (Ok(got), None) => Ok(Some(got)),
        (Ok(got), Some(error)) => Err(format!(
            "expected the error {}, got {}",
            show_expected(error),
            show(&got)
        )),
        (Err(err), Some(error)) => check_error(error, &err).map(|()| None),
        (Err(err), None) => Err(format!("expected success, got {}", show_error(&err))),
    }
}

fn check_followed(followed: &Followed, expect: &FollowExpect) -> Result<(), String> {
    let Followed {
        events,
        error,
        timed_out,
    } = followed;
    let got = || {
        let mut got = show_events(events);
        if let Some(err) = error {
            got.push_str(&format!(", then {}", show_error(err)));
        }
        if *timed_out {
            got.push_str(&format!(
                ", then nothing more within {} s",
                STEP_TIMEOUT.as_secs()
            ));
        }
        got
    };
    match expect {
        FollowExpect::Error { error: expected } => match error {
            Some(err) if events.is_empty() => check_error(expected, err),
            _ => Err(format!(
                "expected the error {}, got {}",
                show_expected(expected),
                got()
            )),
        },
        _ if error.is_some() || *timed_out => Err(format!("expected events, got {}", got())),
        FollowExpect::Events { events: expected } if events_eq(events, expected) => Ok(()),
        FollowExpect::Events { events: expected } => Err(format!(
            "expected {}\n      got {}",
            show_events(expected),
            got()
        )),
        FollowExpect::Tail { count, tail } => {
            let got_tail = &events[events.len().saturating_sub(tail.len())..];
            if events.len() == *count && events_eq(got_tail, tail) {
                Ok(())
            } else {
                Err(format!(
                    "expected {count} events ending {}\n      got {} events ending {}",
                    show_events(tail),
                    events.len(),
                    show_events(got_tail)
                ))
            }
        }
    }
}

/// Run a scenario's steps in order; the first failing one ends it. Also returns how many steps
/// were skipped.
async fn run_scenario(api: &Api, base: &str, scenario: &Scenario) -> (Verdict, usize) {
    let mut runner = Runner {
        api,
        base,
        saved: HashMap::new(),
        unsaved: HashSet::new(),
        created: Vec::new(),
    };
    let mut skipped = 0;
    for (i, step) in scenario.steps.iter().enumerate() {
        match runner.step(step).await {
            Ok(true) => {}
            Ok(false) => skipped += 1,
            Err(msg) => {
                // Leave no `sleep` behind on the shared server; the async client is enough.
                let cleanup = longrun::Client::new(base).expect("a client for the cleanup");
                for run in &runner.created {
                    let _ = tokio::time::timeout(STEP_TIMEOUT, cleanup.cancel(run)).await;
                }
                return (
                    Verdict::Failed(format!("steps[{i}] ({}): {msg}", step.op())),
                    skipped,
                );
            }
        }
    }
    let verdict = if skipped == scenario.steps.len() {
        Verdict::Skipped
    } else {
        Verdict::Passed
    };
    (verdict, skipped)
}

/// Run every scenario through one flavour of the client against the demo server at `base`,
/// and panic with every unexpected result.
async fn conformance(flavour: Flavour, base: String) {
    conformance_over(flavour, base, Transport::Sse).await
}

/// [`conformance`] with the client's transport: `Transport::WebSocket` sends every call of
/// every scenario over one WebSocket (spec §28).
async fn conformance_over(flavour: Flavour, base: String, transport: Transport) {
    let files = load();
    let builder = longrun::Client::builder(base.clone()).transport(transport);
    let api = match flavour {
        Flavour::Async => Api::Async(builder.build().expect("an async client")),
        Flavour::Blocking => {
            let client = unblock(move || longrun::blocking::Client::from_builder(builder))
                .await
                .expect("a blocking client");
            Api::Blocking(client)
        }
    };

    let (api_ref, base_ref) = (&api, base.as_str());
    let jobs = files.iter().flat_map(|(file, f)| {
        f.scenarios.iter().map(move |scenario| async move {
            (
                file,
                scenario,
                run_scenario(api_ref, base_ref, scenario).await,
            )
        })
    });
    let results: Vec<_> = futures::stream::iter(jobs)
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    // The blocking client's runtime cannot be dropped inside this async context.
    unblock(move || drop(api)).await;

    let known: HashSet<&str> = KNOWN_FAILURES
        .iter()
        .filter(|(f, _)| *f == flavour)
        .map(|(_, description)| *description)
        .collect();
    let name = match transport {
        Transport::WebSocket => format!("{} over a WebSocket", flavour.name()),
        _ => flavour.name().to_owned(),
    };
    let mut problems = Vec::new();
    for stale in known
        .iter()
        .filter(|d| !results.iter().any(|(_, s, _)| s.description == **d))
    {
        problems.push(format!(
            "KNOWN_FAILURES lists ({name}) {stale:?}, which is no scenario: remove it"
        ));
    }
    let (mut passed, mut known_failed, mut failed, mut skipped, mut skipped_steps) =
        (0, 0, 0, 0, 0);
    for (file, scenario, (verdict, skipped_here)) in &results {
        skipped_steps += skipped_here;
        let listed = known.contains(scenario.description.as_str());
        let scenario = &scenario.description;
        match (verdict, listed) {
            (Verdict::Passed, false) => passed += 1,
            (Verdict::Skipped, false) => skipped += 1,
            (Verdict::Failed(_), true) => known_failed += 1,
            (Verdict::Passed | Verdict::Skipped, true) => problems.push(format!(
                "{file}: {scenario:?} [{name}] did not fail but is in KNOWN_FAILURES: remove it"
            )),
            (Verdict::Failed(msg), false) => {
                failed += 1;
                problems.push(format!("{file}: {scenario:?} [{name}] {msg}"));
            }
        }
    }
    println!(
        "conformance [{name}]: {} scenarios in {} files: {} executed ({passed} passed, \
         {known_failed} known failures, {failed} failed), {skipped} skipped as http-only; \
         {skipped_steps} steps skipped",
        results.len(),
        files.len(),
        results.len() - skipped,
    );
    assert!(
        passed + known_failed + failed > 0,
        "no scenario was executed through the {name} client: a passing run would prove nothing"
    );
    assert!(
        problems.is_empty(),
        "{} conformance problem(s) of the {name} client:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_async_client_passes_the_conformance_scenarios() {
    conformance(Flavour::Async, common::demo_server().await).await;
}

/// The same scenarios with a `unix:///…` base URL (spec §20.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_async_client_passes_the_conformance_scenarios_over_a_unix_socket() {
    let (base, _dir) = common::unix_demo_server().await;
    conformance(Flavour::Async, base).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blocking_client_passes_the_conformance_scenarios_over_a_unix_socket() {
    let (base, _dir) = common::unix_demo_server().await;
    conformance(Flavour::Blocking, base).await;
}

/// Every call of every scenario over one WebSocket per client (spec §28).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_async_client_passes_the_conformance_scenarios_over_a_websocket() {
    let base = common::demo_server().await;
    conformance_over(Flavour::Async, base, Transport::WebSocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blocking_client_passes_the_conformance_scenarios_over_a_websocket_on_a_unix_socket() {
    let (base, _dir) = common::unix_demo_server().await;
    conformance_over(Flavour::Blocking, base, Transport::WebSocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blocking_client_passes_the_conformance_scenarios() {
    conformance(Flavour::Blocking, common::demo_server().await).await;
}

#[test]
fn values_compare_as_the_readme_says() {
    let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap();
    assert!(json_eq(
        &parse("[1, 1.0, {\"a\": 1e0}]"),
        &parse("[1.0, 1, {\"a\": 1}]")
    ));
    assert!(json_eq(
        &parse("{\"a\":1,\"b\":2}"),
        &parse("{\"b\":2,\"a\":1}")
    ));
    assert!(!json_eq(&parse("[1, 2]"), &parse("[2, 1]")));
    assert!(!json_eq(&parse("1"), &parse("\"1\"")));
    assert!(!json_eq(&parse("{\"a\":null}"), &parse("{}")));
    assert!(json_eq(&parse("[1e2, -0.5]"), &parse("[100, -5e-1]")));
    assert!(!json_eq(
        &parse("9007199254740991"),
        &parse("9007199254740990")
    ));
}

/// The error kinds scenario files may name (read by serde, so no other name gets through) are
/// exactly the client's.
#[test]
fn the_scenario_error_kinds_are_the_clients() {
    let scenario: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
    let client: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(scenario, client);
}
