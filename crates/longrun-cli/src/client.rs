//! The client subcommands (`submit`, `follow`, `wait`, `cancel`, `exists`, `objects`, …): flags in, calls of
//! the `longrun` crate, then output and an exit code out. Protocol behaviour (resume, retries,
//! timeouts, what each failure is called) is the crate's; this module only translates
//! `longrun::ErrorKind` into exit codes and messages, draws progress, and handles Ctrl-C.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressFinish, ProgressStyle};
use longrun::{
    CancelOutcome, Client, Error, ErrorKind, Event, FollowOptions, Run, State, Transport,
};
use serde_json::{Value, json};

use crate::args::{self, Item, Source};

/// The exit codes, as a literal so `concat!` can put it under other help texts.
macro_rules! exit_codes {
    () => {
        "Exit codes:
  0    success: the run succeeded; submit and cancel were accepted; exists: the run exists
  1    the run ended in error (its message on stderr); exists: the run does not exist or is gone;
       or a local failure (e.g. stdout cannot be written)
  2    usage error: bad flags or arguments, or the server refused them (4xx other than
       401/403/404/410)
  3    the run ended canceled
  4    --timeout passed (the run goes on, unless --cancel-on-timeout)
  5    the server cannot be reached, failed (5xx), or answered something longrun/1 does not allow
  6    not found or gone: the run (follow, wait, cancel) or the object (submit)
  7    not let in: no token or one the server does not know (401), or the token does not
       allow this (403)
  130  interrupted by Ctrl-C (stderr says whether the run was canceled)"
    };
}

pub const EXIT_CODES: &str = exit_codes!();

mod code {
    pub const SUCCESS: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const CANCELED: u8 = 3;
    pub const TIMEOUT: u8 = 4;
    pub const UNREACHABLE: u8 = 5;
    pub const NOT_FOUND: u8 = 6;
    pub const NOT_ALLOWED: u8 = 7;
    /// 128 + SIGINT, what shells report for a command stopped by Ctrl-C.
    pub const INTERRUPTED: u8 = 130;
}

/// Options every client subcommand takes, before or after its name.
#[derive(Args, Debug)]
pub struct Global {
    /// The server: where submit starts runs, and what a run path (/OBJECT/ID) is resolved
    /// against.
    #[arg(
        long,
        global = true,
        env = "LONGRUN_SERVER",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL",
        help_heading = "Client options"
    )]
    server: String,
    /// Send `Authorization: Bearer TOKEN` with every request (a server with --auth needs one).
    /// Prefer LONGRUN_TOKEN or --token-file: a flag's value is visible to other users in `ps`.
    #[arg(
        long,
        global = true,
        env = "LONGRUN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        conflicts_with = "token_file",
        help_heading = "Client options"
    )]
    token: Option<Secret>,
    /// Read the token from FILE (its first line; surrounding whitespace is ignored).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        help_heading = "Client options"
    )]
    token_file: Option<std::path::PathBuf>,
    /// Machine-readable output: one JSON event per line ({"id","state","value"}) for follow,
    /// JSON for everything else.
    #[arg(long, global = true, help_heading = "Client options")]
    json: bool,
}

/// A token from the command line or the environment: never shown, not even by `Debug`.
#[derive(Clone)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start a run of OBJECT and print its URL (or follow it, or wait for its value).
    #[command(after_help = concat!(
        "Arguments are written as in HTTPie: key=value is a string, key:=json any JSON value.
--args gives the whole object; items are applied on top of it (an item replaces the member
with the same key). A key given twice as an item is an error.

Examples:
  longrun submit count n:=5 interval_ms:=200 --follow
  longrun submit echo name=Ada tags:='[\"a\",\"b\"]'
  longrun submit emit --args @args.json result:=true
  echo '{\"ms\": 500}' | longrun submit sleep --args @- --wait

With --json, prints {\"object\",\"id\",\"url\"} instead of the URL.

",
        exit_codes!()
    ))]
    Submit(SubmitArgs),
    /// Print a run's events as they happen, until it ends.
    #[command(after_help = concat!(
        "On a terminal (stderr), a progress bar shows the run's {\"progress\", \"message\"} and the
value is printed at the end. Otherwise (or with --json) each event is a line: `ID STATE VALUE`.
The exit code is the run's outcome.

",
        exit_codes!()
    ))]
    Follow(FollowArgs),
    /// Wait for a run to end and print its value.
    #[command(after_help = exit_codes!())]
    Wait(WaitArgs),
    /// Ask the server to cancel a run.
    ///
    /// Exits 0 also when the run had already ended; the output says so ("already ended").
    #[command(after_help = exit_codes!())]
    Cancel(RunArg),
    /// Exit 0 if a run exists (printing its state), 1 if it does not.
    ///
    /// Prints the run's state (e.g. running), or "not found" / "gone"; with --json,
    /// {"exists","state","last_event_id"} or {"exists": false, "gone"}.
    #[command(after_help = exit_codes!())]
    Exists(RunArg),
    /// Write a run's byte stream to stdout as it is written, until the run ends.
    ///
    /// The run's URL (or its stream URL, URL/stream). A connection that drops is resumed
    /// from the bytes already written (Range), so each byte is written once. The exit code is
    /// the run's outcome, as for wait: `longrun stream URL > file`.
    #[command(after_help = exit_codes!())]
    Stream(StreamArgs),
    /// Print a topic's publications as they come, one JSON line each: {"topic","offset","data"}.
    ///
    /// TOPIC is a dotted name (chat.room-1) or a pattern (chat.*); _runs and _runs.OBJECT are
    /// the server's feeds of runs created, started and ended. Over the server's WebSocket; after a lost
    /// connection it resumes from the next offset. Runs until Ctrl-C (exit 130).
    #[command(after_help = exit_codes!())]
    Sub(SubArgs),
    /// Publish JSON to a topic; prints its offset.
    #[command(after_help = exit_codes!())]
    Pub(PubArgs),
    /// List the runs the token sees, newest first: one page, or all of them with --all.
    ///
    /// A table (STATE, CREATED, ENDED, URL), or with --json one JSON object per run per line
    /// ({"object","id","url","state","created","ended"}, and "tenant" for an admin). When
    /// more runs are left, stderr says how to get the next page (--page-token TOKEN).
    #[command(after_help = exit_codes!())]
    Ls(LsArgs),
    /// List the server's objects (name, kind, description), or print what one takes.
    ///
    /// With NAME, prints the JSON Schema of its arguments, which every submit is checked
    /// against; with --json, the catalogue as the server answers it (spec §13.6).
    #[command(after_help = exit_codes!())]
    Objects(ObjectsArgs),
}

#[derive(Args, Debug)]
pub struct ObjectsArgs {
    /// One object, e.g. count.
    name: Option<String>,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Only runs of this object.
    #[arg(long, value_name = "OBJECT")]
    object: Option<String>,
    /// Only runs in this state: queued, running, success, error, canceled, active (queued or
    /// running) or ended.
    #[arg(long, value_name = "STATE")]
    state: Option<String>,
    /// Runs per page, 1 to 1000 [default: the server's, 50].
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
    /// Every page, following the server's page tokens.
    #[arg(long)]
    all: bool,
    /// Start at this page (the token a previous `ls` printed on stderr).
    #[arg(long, value_name = "TOKEN", conflicts_with = "all")]
    page_token: Option<String>,
}

#[derive(Args, Debug)]
pub struct SubArgs {
    /// The topic, or a pattern with * and ?.
    topic: String,
    /// Start at offset N (replayed from the server's history), instead of from now.
    #[arg(long, value_name = "N")]
    since: Option<u64>,
}

#[derive(Args, Debug)]
pub struct PubArgs {
    /// The topic: dot-separated parts of letters, digits, _ and -.
    topic: String,
    /// The data: inline JSON, @FILE to read it from a file, @- from stdin.
    #[arg(value_name = "JSON|@FILE|@-")]
    data: String,
}

#[derive(Args, Debug)]
pub struct StreamArgs {
    #[command(flatten)]
    run: RunArg,
    /// Start at byte N (the count of bytes you already have), e.g. to append to a file.
    #[arg(long, value_name = "N", default_value_t = 0)]
    from: u64,
}

#[derive(Args, Debug)]
pub struct RunArg {
    /// The run: the URL submit printed (http://HOST/OBJECT/ID), or its path /OBJECT/ID on
    /// --server.
    #[arg(value_name = "URL")]
    url: String,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("watch").args(["follow", "wait"])))]
pub struct SubmitArgs {
    /// The object to run, e.g. count.
    object: String,
    /// Arguments: key=value (a string) or key:=json (any JSON: n:=3, xs:='[1,2]').
    #[arg(value_name = "ITEM", value_parser = args::parse_item)]
    items: Vec<Item>,
    /// The whole arguments object: inline JSON, @FILE to read it from a file, @- from stdin.
    #[arg(long, value_name = "JSON|@FILE|@-")]
    args: Option<String>,
    /// Print the run's events until it ends, like `longrun follow`.
    #[arg(long)]
    follow: bool,
    /// Wait for the run to end and print only its value, like `longrun wait`.
    #[arg(long)]
    wait: bool,
    /// With --follow or --wait: on Ctrl-C, cancel the run, then exit.
    #[arg(long, requires = "watch")]
    cancel_on_interrupt: bool,
    /// Send Idempotency-Key: KEY (1 to 255 visible ASCII characters): submitting again with
    /// the same key and arguments gives the same run instead of a second one, so the submit
    /// is also retried when the connection fails before the reply.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// Send Longrun-Deadline: the run ends canceled (reason deadline) if it is still going
    /// this long after the submit, e.g. 30s or 2h
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    deadline: Option<std::time::Duration>,
}

#[derive(Args, Debug)]
pub struct FollowArgs {
    #[command(flatten)]
    run: RunArg,
    /// Resume after event N, the id of the last event you already have: prints N+1 onwards.
    #[arg(long, value_name = "N")]
    from: Option<u64>,
    /// How to read events [default: sse, falling back to poll by itself when SSE does not get
    /// through].
    #[arg(long, value_enum)]
    transport: Option<TransportArg>,
    /// On Ctrl-C, cancel the run, then exit. Without it, Ctrl-C asks whether to cancel when
    /// stdin is a terminal, and otherwise leaves the run going.
    #[arg(long)]
    cancel_on_interrupt: bool,
}

#[derive(Args, Debug)]
pub struct WaitArgs {
    #[command(flatten)]
    run: RunArg,
    /// Give up after this long (e.g. 500ms, 30s, 5m): exit 4, and the run goes on.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// When --timeout passes, cancel the run too.
    #[arg(long, requires = "timeout")]
    cancel_on_timeout: bool,
    /// On Ctrl-C, cancel the run, then exit. Without it, Ctrl-C asks whether to cancel when
    /// stdin is a terminal, and otherwise leaves the run going.
    #[arg(long)]
    cancel_on_interrupt: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum TransportArg {
    /// Server-Sent Events.
    Sse,
    /// Long polling only.
    Poll,
    /// The server's WebSocket (spec §28).
    Ws,
}

impl From<TransportArg> for Transport {
    fn from(t: TransportArg) -> Transport {
        match t {
            TransportArg::Sse => Transport::Sse,
            TransportArg::Poll => Transport::Poll,
            TransportArg::Ws => Transport::WebSocket,
        }
    }
}

/// Why a command did not exit 0: the exit code, and what to tell the user (if anything).
#[derive(Debug)]
struct Failure {
    code: u8,
    message: Option<String>,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: Some(message.into()),
        }
    }

    fn usage(message: impl Into<String>) -> Failure {
        Failure::new(code::USAGE, message)
    }

    /// An exit code that needs no message (the output already said it).
    fn quiet(code: u8) -> Failure {
        Failure {
            code,
            message: None,
        }
    }
}

type Outcome = Result<(), Failure>;

pub fn main(global: Global, command: Command) -> ExitCode {
    // Signals need the I/O driver; one thread is plenty for one run.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("longrun: cannot start the runtime: {e}");
            return ExitCode::from(code::FAILED);
        }
    };
    match runtime.block_on(dispatch(&global, command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if let Some(message) = failure.message {
                eprintln!("longrun: {message}");
            }
            ExitCode::from(failure.code)
        }
    }
}

async fn dispatch(global: &Global, command: Command) -> Outcome {
    match command {
        Command::Submit(a) => submit(global, a).await,
        Command::Follow(a) => {
            let (client, run) = run_client(global, &a.run)?;
            let options = FollowOptions {
                since: a.from,
                transport: a.transport.map(Transport::from),
            };
            let work = follow(&client, &run, options, global.json);
            interruptible(&client, &run, a.cancel_on_interrupt, work).await
        }
        Command::Wait(a) => {
            let (client, run) = run_client(global, &a.run)?;
            let work = wait(&client, &run, a.timeout, a.cancel_on_timeout);
            interruptible(&client, &run, a.cancel_on_interrupt, work).await
        }
        Command::Cancel(a) => {
            let (client, run) = run_client(global, &a)?;
            cancel(&client, &run, global.json).await
        }
        Command::Exists(a) => {
            let (client, run) = run_client(global, &a)?;
            exists(&client, &run, global.json).await
        }
        Command::Sub(a) => {
            let client = server_client(global)?;
            let work = subscribe(&client, &a.topic, a.since);
            tokio::select! {
                biased;
                () = ctrl_c() => Err(Failure::quiet(code::INTERRUPTED)),
                outcome = work => outcome,
            }
        }
        Command::Pub(a) => {
            let client = server_client(global)?;
            let data = args::read_json(&Source::parse(&a.data)).map_err(Failure::usage)?;
            let offset = client
                .publish(&a.topic, &data)
                .await
                .map_err(|e| failure(e, Target::Server(&global.server)))?;
            if global.json {
                println!("{}", json!({"topic": a.topic, "offset": offset}));
            } else {
                println!("{offset}");
            }
            Ok(())
        }
        Command::Ls(a) => {
            let client = server_client(global)?;
            list(&client, a, global.json).await
        }
        Command::Objects(a) => {
            let client = server_client(global)?;
            objects(&client, a.name.as_deref(), global.json).await
        }
        Command::Stream(mut a) => {
            // The stream's own URL names the same run.
            if let Some(url) = a.run.url.strip_suffix("/stream") {
                a.run.url = url.to_owned();
            }
            let (client, run) = run_client(global, &a.run)?;
            let work = stream(&client, &run, a.from);
            interruptible(&client, &run, false, work).await
        }
    }
}

/// `longrun objects [NAME]`: the catalogue as a table, or one object's schema.
async fn objects(client: &Client, name: Option<&str>, json: bool) -> Outcome {
    let server = client.base_url().as_str();
    let Some(name) = name else {
        let list = client
            .objects()
            .await
            .map_err(|e| failure(e, Target::Server(server)))?;
        if json {
            return print_line(&json!({ "objects": list }).to_string());
        }
        let width = |f: fn(&longrun::ObjectInfo) -> usize, title: &str| {
            list.iter().map(f).max().unwrap_or(0).max(title.len())
        };
        let name_w = width(|o| o.name.len(), "NAME");
        let kind_w = width(|o| o.kind.len(), "KIND");
        let mut out = format!("{:name_w$}  {:kind_w$}  DESCRIPTION", "NAME", "KIND");
        for o in &list {
            let description = o.description.as_deref().unwrap_or("");
            out.push_str(&format!(
                "\n{:name_w$}  {:kind_w$}  {description}",
                o.name, o.kind
            ));
        }
        return print_line(out.trim_end());
    };
    let object = client
        .object(name)
        .await
        .map_err(|e| failure(e, Target::Object { name, server }))?;
    let shown = if json {
        serde_json::to_string(&object)
    } else {
        serde_json::to_string_pretty(&object.args_schema)
    };
    print_line(&shown.expect("JSON values serialize"))
}

/// A client of --server.
fn server_client(global: &Global) -> Result<Client, Failure> {
    connect(&global.server, global)?.map_err(|e| Failure::usage(e.to_string()))
}

/// Print every publication of `topic` as a JSON line until interrupted.
async fn subscribe(client: &Client, topic: &str, since: Option<u64>) -> Outcome {
    let mut publications = client.subscribe(topic, since);
    let mut out = std::io::stdout().lock();
    while let Some(p) = publications.next().await {
        let p = p.map_err(|e| failure(e, Target::Server(client.base_url().as_str())))?;
        let line = json!({"topic": p.topic, "offset": p.offset, "data": p.data});
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|e| Failure::new(code::FAILED, format!("cannot write stdout: {e}")))?;
    }
    Ok(())
}

/// Print the runs of one page (or, with --all, of every page) as they come.
async fn list(client: &Client, a: LsArgs, json: bool) -> Outcome {
    // The next page needs the same filters as this one.
    let mut again = String::new();
    for (flag, value) in [("--object", &a.object), ("--state", &a.state)] {
        if let Some(value) = value {
            again.push_str(&format!(" {flag} {value}"));
        }
    }
    let mut query = longrun::ListRuns {
        object: a.object,
        state: a.state,
        limit: a.limit,
        page_token: a.page_token,
    };
    if !json {
        print_line(&format!(
            "{:<9} {:<24} {:<24} URL",
            "STATE", "CREATED", "ENDED"
        ))?;
    }
    loop {
        let page = client
            .list_runs(&query)
            .await
            .map_err(|e| failure(e, Target::Server(client.base_url().as_str())))?;
        for listed in &page.runs {
            let run = &listed.run;
            print_line(&if json {
                let mut line = json!({
                    "object": run.object(),
                    "id": run.id().to_string(),
                    "url": run.url().as_str(),
                    "state": listed.state.as_str(),
                    "created": listed.created,
                    "ended": listed.ended,
                });
                if let Some(tenant) = &listed.tenant {
                    line["tenant"] = tenant.as_str().into();
                }
                line.to_string()
            } else {
                format!(
                    "{:<9} {:<24} {:<24} {}",
                    listed.state.as_str(),
                    listed.created,
                    listed.ended.as_deref().unwrap_or("-"),
                    run.url()
                )
            })?;
        }
        match page.next_page_token {
            Some(token) if a.all => query.page_token = Some(token),
            Some(token) => {
                eprintln!("longrun: more runs: longrun ls{again} --page-token {token} (or --all)");
                return Ok(());
            }
            None => return Ok(()),
        }
    }
}

/// Copy the run's byte stream to stdout, then report the run's outcome.
async fn stream(client: &Client, run: &Run, from: u64) -> Outcome {
    use futures::StreamExt;
    use std::io::Write;
    let mut bytes = client.stream_from(run, from);
    // One run at a time: a blocking write to stdout holds up nothing else.
    let mut out = std::io::stdout().lock();
    let cannot =
        |e: std::io::Error| Failure::new(code::FAILED, format!("cannot write stdout: {e}"));
    while let Some(chunk) = bytes.next().await {
        let chunk = chunk.map_err(|e| failure(e, Target::Run(run)))?;
        out.write_all(&chunk).map_err(cannot)?;
    }
    out.flush().map_err(cannot)?;
    drop(out);
    client
        .wait(run, None)
        .await
        .map(drop)
        .map_err(|e| failure(e, Target::Run(run)))
}

/// The token of --token, LONGRUN_TOKEN or --token-file, if any.
fn token(global: &Global) -> Result<Option<String>, Failure> {
    if let Some(Secret(token)) = &global.token {
        return Ok(Some(token.clone()));
    }
    let Some(path) = &global.token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::usage(format!(
            "cannot read the token file {}: {e}",
            path.display()
        ))
    })?;
    match text.lines().next().map(str::trim) {
        Some(token) if !token.is_empty() => Ok(Some(token.to_owned())),
        _ => Err(Failure::usage(format!(
            "the token file {} is empty",
            path.display()
        ))),
    }
}

fn connect(base: &str, global: &Global) -> Result<longrun::Result<Client>, Failure> {
    let mut builder = Client::builder(base);
    if let Some(token) = token(global)? {
        builder = builder.token(token);
    }
    Ok(builder.build())
}

/// The run named on the command line, and a client for its server. A full URL names its own
/// server; a bare path is resolved against --server.
fn run_client(global: &Global, arg: &RunArg) -> Result<(Client, Run), Failure> {
    let url = if arg.url.starts_with('/') {
        format!("{}{}", global.server.trim_end_matches('/'), arg.url)
    } else {
        arg.url.clone()
    };
    let run = Run::from_url(&url).map_err(|e| {
        const HINT: &str = "give the run URL that submit printed (http://HOST/OBJECT/ID), or \
                            its path /OBJECT/ID on --server";
        // Not even shaped like a URL: the client's own advice (a base URL) would mislead.
        if url.contains("://") {
            Failure::usage(format!("{e}\n  {HINT}"))
        } else {
            Failure::usage(format!("{:?} is not a run\n  {HINT}", arg.url))
        }
    })?;
    // The run's own server (for one on a unix socket, that socket).
    let client =
        connect(run.base_url().as_str(), global)?.map_err(|e| Failure::usage(e.to_string()))?;
    Ok((client, run))
}

/// What a failed call was about, for the hint that follows the error.
#[derive(Clone, Copy)]
enum Target<'a> {
    Object {
        name: &'a str,
        server: &'a str,
    },
    Run(&'a Run),
    /// A call on the server itself (a topic).
    Server(&'a str),
}

fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::RunFailed => code::FAILED,
        ErrorKind::InvalidArgument => code::USAGE,
        ErrorKind::Canceled => code::CANCELED,
        ErrorKind::Timeout => code::TIMEOUT,
        ErrorKind::Transport | ErrorKind::Server | ErrorKind::Protocol => code::UNREACHABLE,
        ErrorKind::NotFound | ErrorKind::Gone => code::NOT_FOUND,
        ErrorKind::Unauthorized | ErrorKind::Forbidden => code::NOT_ALLOWED,
        // A kind newer than this binary: not success, and nothing more specific to say.
        _ => code::FAILED,
    }
}

/// A client error as an exit code and a message that says what to do next.
fn failure(e: Error, target: Target<'_>) -> Failure {
    let kind = e.kind();
    let hint = match (kind, target) {
        (ErrorKind::Transport, Target::Object { server, .. } | Target::Server(server)) => {
            Some(format!(
                "is a longrun server running at {server}? Point --server (or LONGRUN_SERVER) at it"
            ))
        }
        (ErrorKind::Transport, Target::Run(_)) => {
            Some("is the server up? Try again once it is".to_owned())
        }
        (ErrorKind::Server, _) => Some("the server failed; try again later".to_owned()),
        (ErrorKind::Protocol, _) => Some("is this a longrun/1 server? Check the URL".to_owned()),
        (ErrorKind::NotFound, Target::Object { name, server }) => Some(format!(
            "check the object name: the server at {server} has no object {name:?}"
        )),
        (ErrorKind::NotFound, Target::Run(_)) => {
            Some("check the run URL; a server forgets runs some time after they end".to_owned())
        }
        (ErrorKind::Unauthorized, _) => Some(
            "give the server's token with --token-file FILE, LONGRUN_TOKEN or --token \
             (`longrun token new` makes one for its auth file)"
                .to_owned(),
        ),
        (ErrorKind::Forbidden, _) => Some(
            "the token lacks the scope for this (submit, submit:OBJECT, read or cancel); \
             use a token that has it"
                .to_owned(),
        ),
        (ErrorKind::InvalidArgument, _)
            if e.problem()
                .is_some_and(|p| p.type_uri == "urn:longrun:problem:idempotency-key-reused") =>
        {
            Some(
                "this --idempotency-key was used for another submit: give a new key for new \
                 arguments"
                    .to_owned(),
            )
        }
        (ErrorKind::InvalidArgument, Target::Object { name, .. }) => Some(format!(
            "check the arguments {name} takes: `longrun objects {name}` prints its schema"
        )),
        (ErrorKind::Timeout, Target::Run(run)) => {
            Some(format!("cancel it with: longrun cancel {run}"))
        }
        _ => None,
    };
    let message = match hint {
        Some(hint) => format!("{e}\n  {hint}"),
        None => e.to_string(),
    };
    Failure::new(exit_code(kind), message)
}

/// Write one line to stdout, now (a follower may be reading line by line).
fn print_line(line: &str) -> Outcome {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        // The reader has gone (`longrun follow … | head -1`): it has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::quiet(code::SUCCESS)),
        Err(e) => Err(Failure::new(
            code::FAILED,
            format!("cannot write to stdout: {e}"),
        )),
    }
}

async fn submit(global: &Global, a: SubmitArgs) -> Outcome {
    let source = a.args.as_deref().map(Source::parse);
    let value = args::build(source.as_ref(), &a.items).map_err(Failure::usage)?;
    let client = connect(&global.server, global)?.map_err(|e| {
        Failure::usage(format!(
            "{e}\n  set --server (or LONGRUN_SERVER) to the server's URL, e.g. http://127.0.0.1:8080"
        ))
    })?;
    let target = Target::Object {
        name: &a.object,
        server: &global.server,
    };
    let options = longrun::SubmitOptions {
        idempotency_key: a.idempotency_key.clone(),
        deadline: a.deadline,
        ..Default::default()
    };
    let run = client
        .submit_with(&a.object, value, options)
        .await
        .map_err(|e| failure(e, target))?;
    if a.follow || a.wait {
        let work = async {
            // The URL is the handle to come back to the run; stdout is kept for events or the
            // value. Printed inside `interruptible`, so Ctrl-C is handled from here on.
            eprintln!("longrun: run {run}");
            if a.follow {
                follow(&client, &run, FollowOptions::default(), global.json).await
            } else {
                wait(&client, &run, None, false).await
            }
        };
        interruptible(&client, &run, a.cancel_on_interrupt, work).await
    } else if global.json {
        print_line(
            &json!({
                "object": run.object(),
                "id": run.id().to_string(),
                "url": run.url().as_str(),
            })
            .to_string(),
        )
    } else {
        print_line(run.url().as_str())
    }
}

async fn follow(client: &Client, run: &Run, options: FollowOptions, json: bool) -> Outcome {
    let view = View::new(json);
    let mut events = client.follow_with(run, options);
    let mut last = None;
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| failure(e, Target::Run(run)))?;
        view.show(&event)?;
        last = Some(event);
    }
    match last.filter(|ev| ev.state.is_terminal()) {
        Some(end) => {
            view.finish(&end)?;
            ended(end.state, Some(end.value))
        }
        None => {
            // Nothing came after the cursor (--from at the end of an ended run): the state the
            // run ended in still decides the exit code.
            drop(view);
            let status = client
                .status(run)
                .await
                .map_err(|e| failure(e, Target::Run(run)))?;
            ended(status.state, None)
        }
    }
}

/// The exit of a command that saw a run end in `state`.
fn ended(state: State, value: Option<Value>) -> Outcome {
    let error = match (state, value) {
        (State::Success, _) => return Ok(()),
        (State::Error, Some(value)) => Error::RunFailed { value },
        (State::Canceled, Some(value)) => Error::Canceled { value },
        (State::Error, None) => return Err(Failure::new(code::FAILED, "the run ended in error")),
        (State::Canceled, None) => {
            return Err(Failure::new(code::CANCELED, "the run was canceled"));
        }
        (State::Queued | State::Running, _) => {
            return Err(Failure::new(
                code::UNREACHABLE,
                format!("the follow ended while the run is still {state}; follow it again"),
            ));
        }
    };
    Err(Failure::new(exit_code(error.kind()), error.to_string()))
}

/// How `follow` shows events: a progress bar for a person at a terminal, lines otherwise.
enum View {
    Lines { json: bool },
    Bar(ProgressBar),
}

/// Positions of the bar: fine enough for any terminal width.
const BAR_STEPS: u64 = 1000;

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}").expect("a valid template")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:40}] {percent:>3}% {msg}")
        .expect("a valid template")
        .progress_chars("=> ")
}

impl View {
    fn new(json: bool) -> View {
        if json || !std::io::stderr().is_terminal() {
            return View::Lines { json };
        }
        // Cleared when dropped, so a Ctrl-C prompt or an error message starts on a clean line.
        let bar = ProgressBar::new_spinner()
            .with_style(spinner_style())
            .with_finish(ProgressFinish::AndClear);
        bar.enable_steady_tick(Duration::from_millis(120));
        View::Bar(bar)
    }

    fn show(&self, event: &Event) -> Outcome {
        match self {
            View::Lines { json: true } => print_line(&json_line(event)),
            View::Lines { json: false } => print_line(&plain_line(event)),
            View::Bar(bar) => {
                draw(bar, event);
                Ok(())
            }
        }
    }

    /// The run ended with `end`: a bar makes way for the value (lines have shown it already).
    fn finish(self, end: &Event) -> Outcome {
        match self {
            View::Lines { .. } => Ok(()),
            View::Bar(bar) => {
                bar.finish_and_clear();
                if end.state == State::Success {
                    print_line(&end.value.to_string())
                } else {
                    Ok(())
                }
            }
        }
    }
}

fn json_line(event: &Event) -> String {
    serde_json::to_string(event).expect("an event serializes")
}

fn plain_line(event: &Event) -> String {
    format!("{} {} {}", event.id, event.state, event.value)
}

/// Move the bar for one event, by the progress convention.
fn draw(bar: &ProgressBar, event: &Event) {
    match event.progress() {
        Some(p) => {
            if let Some(fraction) = p.fraction {
                if bar.length().is_none() {
                    bar.set_style(bar_style());
                    bar.set_length(BAR_STEPS);
                }
                bar.set_position((fraction * BAR_STEPS as f64).round() as u64);
            }
            bar.set_message(p.message.unwrap_or_else(|| event.state.to_string()));
        }
        // A running value outside the convention is the handler's own news: show it whole.
        None if event.state == State::Running => bar.println(plain_line(event)),
        None => bar.set_message(event.state.to_string()),
    }
}

async fn wait(
    client: &Client,
    run: &Run,
    timeout: Option<Duration>,
    cancel_on_timeout: bool,
) -> Outcome {
    let result = match timeout {
        Some(limit) if cancel_on_timeout => client.wait_or_cancel(run, limit).await,
        _ => client.wait(run, timeout).await,
    };
    match result {
        Ok(value) => print_line(&value.to_string()),
        Err(Error::Timeout { after, .. }) if cancel_on_timeout => Err(Failure::new(
            code::TIMEOUT,
            format!(
                "timed out after {} waiting for the run; canceled it: {run}",
                humantime::format_duration(after)
            ),
        )),
        Err(e) => Err(failure(e, Target::Run(run))),
    }
}

async fn cancel(client: &Client, run: &Run, json: bool) -> Outcome {
    let outcome = client
        .cancel(run)
        .await
        .map_err(|e| failure(e, Target::Run(run)))?;
    let url = run.url().as_str();
    let line = match (outcome, json) {
        (CancelOutcome::Accepted, false) => format!("canceling {url}"),
        (CancelOutcome::AlreadyEnded(state), false) => {
            format!("already ended ({state}), nothing to cancel: {url}")
        }
        (CancelOutcome::Accepted, true) => json!({"url": url, "outcome": "accepted"}).to_string(),
        (CancelOutcome::AlreadyEnded(state), true) => {
            json!({"url": url, "outcome": "already_ended", "state": state.as_str()}).to_string()
        }
    };
    print_line(&line)
}

async fn exists(client: &Client, run: &Run, json: bool) -> Outcome {
    match client.status(run).await {
        Ok(status) => print_line(&if json {
            json!({
                "exists": true,
                "state": status.state.as_str(),
                "last_event_id": status.last_event_id,
            })
            .to_string()
        } else {
            status.state.to_string()
        }),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Gone) => {
            let gone = e.kind() == ErrorKind::Gone;
            print_line(&match (json, gone) {
                (true, _) => json!({"exists": false, "gone": gone}).to_string(),
                (false, true) => "gone".to_owned(),
                (false, false) => "not found".to_owned(),
            })?;
            Err(Failure::quiet(code::FAILED))
        }
        Err(e) => Err(failure(e, Target::Run(run))),
    }
}

/// Run `work` (following or waiting on `run`) until it ends or Ctrl-C is pressed.
async fn interruptible(
    client: &Client,
    run: &Run,
    cancel_on_interrupt: bool,
    work: impl Future<Output = Outcome>,
) -> Outcome {
    let mut interrupt = std::pin::pin!(ctrl_c());
    // `biased`: the handler is installed (by the first poll) before `work` can print anything,
    // so whoever reads our first line may send SIGINT at once. `work` is dropped when the
    // select ends, which clears a progress bar before any prompt.
    let finished = tokio::select! {
        biased;
        () = &mut interrupt => None,
        outcome = work => Some(outcome),
    };
    match finished {
        Some(outcome) => outcome,
        None => Err(interrupted(client, run, cancel_on_interrupt).await),
    }
}

/// Completes on Ctrl-C (SIGINT); never, if the handler cannot be installed.
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn interrupted(client: &Client, run: &Run, cancel_on_interrupt: bool) -> Failure {
    let cancel = cancel_on_interrupt || (std::io::stdin().is_terminal() && ask(run).await);
    let message = if !cancel {
        format!("interrupted; the run goes on: {run}\n  cancel it with: longrun cancel {run}")
    } else {
        match client.cancel(run).await {
            Ok(CancelOutcome::Accepted) => format!("interrupted; canceled the run {run}"),
            Ok(CancelOutcome::AlreadyEnded(state)) => {
                format!("interrupted; the run had already ended ({state}): {run}")
            }
            Err(e) => format!(
                "interrupted, but canceling the run failed: {e}\n  try again with: longrun cancel {run}"
            ),
        }
    };
    Failure::new(code::INTERRUPTED, message)
}

/// Ask on the terminal whether to cancel; no (the default) on a bare Enter, end of input, or a
/// second Ctrl-C.
async fn ask(run: &Run) -> bool {
    eprint!("\nCancel the run {run}? [y/N] ");
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own rather than the runtime's blocking pool, which the runtime waits for
    // on shutdown: after a second Ctrl-C the process must exit while the read still blocks.
    std::thread::spawn(move || {
        let mut line = String::new();
        let yes = std::io::stdin().read_line(&mut line).is_ok()
            && matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes");
        let _ = tx.send(yes);
    });
    tokio::select! {
        answer = rx => answer.unwrap_or(false),
        () = ctrl_c() => {
            eprintln!();
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_kind_has_a_documented_exit_code() {
        for kind in ErrorKind::ALL {
            let code = exit_code(kind);
            assert!(
                EXIT_CODES.contains(&format!("\n  {code} ")),
                "{kind} exits {code}, which the help does not list"
            );
        }
        assert_eq!(exit_code(ErrorKind::NotFound), code::NOT_FOUND);
        assert_eq!(exit_code(ErrorKind::Transport), code::UNREACHABLE);
        assert_eq!(exit_code(ErrorKind::Unauthorized), code::NOT_ALLOWED);
        assert_eq!(exit_code(ErrorKind::Forbidden), code::NOT_ALLOWED);
    }

    #[test]
    fn a_run_end_decides_the_exit_code() {
        assert!(ended(State::Success, Some(Value::Null)).is_ok());
        let f = ended(State::Error, Some(json!({"message": "boom"}))).unwrap_err();
        assert_eq!(f.code, code::FAILED);
        assert_eq!(f.message.as_deref(), Some("run failed: boom"));
        assert_eq!(
            ended(State::Canceled, None).unwrap_err().code,
            code::CANCELED
        );
        assert_eq!(
            ended(State::Running, None).unwrap_err().code,
            code::UNREACHABLE
        );
    }

    #[test]
    fn the_bar_follows_the_progress_convention() {
        let bar = ProgressBar::hidden().with_style(spinner_style());
        let event = |id, state, value| Event { id, state, value };
        draw(&bar, &event(0, State::Queued, Value::Null));
        assert_eq!((bar.length(), bar.message()), (None, "queued".to_owned()));
        draw(
            &bar,
            &event(
                1,
                State::Running,
                json!({"progress": 0.25, "message": "1/4"}),
            ),
        );
        assert_eq!(bar.length(), Some(BAR_STEPS));
        assert_eq!(bar.position(), BAR_STEPS / 4);
        assert_eq!(bar.message(), "1/4");
        draw(&bar, &event(2, State::Running, json!({"progress": 0.5})));
        assert_eq!(
            (bar.position(), bar.message()),
            (BAR_STEPS / 2, "running".to_owned())
        );
    }
}
