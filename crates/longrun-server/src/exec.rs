//! Exec objects: a program as an object. The convention (stdin/env in, stdout lines as
//! events, `LONGRUN_RESULT` file as the result, exit status as success/error, process-group
//! signals for cancel) is specified in `spec/PROTOCOL.md`, "Exec objects".
//!
//! The program is started directly, never through a shell unless `shell = true` was asked
//! for, and the run's arguments only ever travel as data (stdin, env), never as argv.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, Decoder, FramedRead};

use crate::handler::{Handler, HandlerResult, ObjectOptions, RunContext, RunError};

/// Longest stdout line turned into an event; longer lines are dropped with a warning.
const MAX_LINE: usize = 1024 * 1024;
/// How much of stderr an `error` event carries.
const STDERR_TAIL: usize = 4096;
/// Largest `LONGRUN_ARGS`: Linux caps one environment string at 128 KiB, and the body limit
/// allows more; bigger arguments still arrive on stdin.
const MAX_ARGS_ENV: usize = 64 * 1024;

/// How to run a program as an object: `[exec.NAME]` in the config file, or
/// `--exec NAME='program arg…'` on the command line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    /// The program and its fixed arguments: an array, or a string split by POSIX shell-word
    /// rules (quotes, backslashes) without any shell running.
    pub command: Command_,
    /// Run `command` (a string) with `sh -c`. Off unless asked for.
    #[serde(default)]
    pub shell: bool,
    pub cwd: Option<PathBuf>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Cancel a run still going after this long (reason `deadline`).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Keep this object's ended runs for this long (at most the server's retention).
    #[serde(default, with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// The run has a byte stream (spec §27): the program's raw stdout goes to it, and its
    /// events are the lines it writes to the FIFO named by `LONGRUN_EVENTS` (spec §19.4).
    #[serde(default)]
    pub stream: bool,
    /// The stream's content type (with `stream = true`; default `application/octet-stream`).
    pub content_type: Option<String>,
    /// What the program does, for `GET /_objects` (spec §13.6).
    pub description: Option<String>,
    /// The arguments' JSON Schema, checked at submit (spec §19): a table holding the schema
    /// itself, or a string naming a JSON file that holds it (relative to the server's working
    /// directory). Without it, any object.
    pub args_schema: Option<Value>,
}

/// A command as written by the user.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Command_ {
    Line(String),
    Argv(Vec<String>),
}

impl ExecSpec {
    /// A spec from the `--exec` flag's command string.
    pub fn from_command_line(command: &str) -> Result<Self, String> {
        let spec = ExecSpec {
            command: Command_::Line(command.to_owned()),
            shell: false,
            cwd: None,
            env: BTreeMap::new(),
            timeout: None,
            retention: None,
            stream: false,
            content_type: None,
            description: None,
            args_schema: None,
        };
        spec.argv()?;
        Ok(spec)
    }

    /// The argv to execute. For `shell = true`, `sh -c <command>`.
    pub fn argv(&self) -> Result<Vec<String>, String> {
        let argv = match (&self.command, self.shell) {
            (Command_::Line(line), true) => vec!["sh".into(), "-c".into(), line.clone()],
            (Command_::Argv(_), true) => {
                return Err("shell = true needs the command as one string".into());
            }
            (Command_::Line(line), false) => shell_words::split(line)
                .map_err(|e| format!("cannot split command {line:?}: {e}"))?,
            (Command_::Argv(argv), false) => argv.clone(),
        };
        if argv.is_empty() || argv[0].is_empty() {
            return Err("the command is empty".into());
        }
        Ok(argv)
    }

    /// The object's options; `Err` when `args_schema` names a file that cannot be read as
    /// JSON (whether the schema is one is checked when the server is built).
    pub fn options(&self) -> Result<ObjectOptions, String> {
        let args_schema = match &self.args_schema {
            Some(Value::String(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read args_schema file {path:?}: {e}"))?;
                Some(
                    serde_json::from_str(&text)
                        .map_err(|e| format!("args_schema file {path:?} is not JSON: {e}"))?,
                )
            }
            other => other.clone(),
        };
        Ok(ObjectOptions {
            timeout: self.timeout,
            retention: self.retention,
            stream: self
                .stream
                .then(|| self.content_type.clone().unwrap_or_default()),
            description: self.description.clone(),
            args_schema,
        })
    }

    /// The handler that runs this program.
    pub fn handler(&self) -> Result<ExecHandler, String> {
        Ok(ExecHandler {
            argv: Arc::new(self.argv()?),
            cwd: self.cwd.clone(),
            env: Arc::new(self.env.clone()),
            stream: self.stream,
        })
    }
}

pub struct ExecHandler {
    argv: Arc<Vec<String>>,
    cwd: Option<PathBuf>,
    env: Arc<BTreeMap<String, String>>,
    stream: bool,
}

impl Handler for ExecHandler {
    fn start(&self, args: Value, ctx: RunContext) -> BoxFuture<'static, HandlerResult> {
        let argv = self.argv.clone();
        let cwd = self.cwd.clone();
        let env = self.env.clone();
        let stream = self.stream;
        Box::pin(async move { run_program(&argv, cwd, &env, stream, args, ctx).await })
    }
}

/// Kills the program's whole process group when dropped: this is what happens when a
/// canceled run outlives the grace period and the server drops its handler.
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn signal(&self, signal: Signal) {
        if let Some(pgid) = self.0 {
            // ESRCH (nobody left in the group) is the normal case after an exit.
            let _ = killpg(pgid, signal);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

async fn run_program(
    argv: &[String],
    cwd: Option<PathBuf>,
    env: &BTreeMap<String, String>,
    stream: bool,
    args: Value,
    ctx: RunContext,
) -> HandlerResult {
    let result_dir = tempfile::tempdir()
        .map_err(|e| RunError::new(format!("cannot create a result file: {e}")))?;
    let result_path = result_dir.path().join("result");
    tokio::fs::write(&result_path, b"")
        .await
        .map_err(|e| RunError::new(format!("cannot create a result file: {e}")))?;
    let args_json = args.to_string();

    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env)
        .env("LONGRUN_RUN_ID", ctx.id().to_string())
        .env("LONGRUN_OBJECT", ctx.object())
        .env("LONGRUN_RESULT", &result_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so cancel reaches the children a script starts too.
        .process_group(0)
        .kill_on_drop(true);
    if args_json.len() <= MAX_ARGS_ENV {
        cmd.env("LONGRUN_ARGS", &args_json);
    }
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    // With a stream, stdout is bytes and the events come through a FIFO.
    let mut events = if stream {
        let fifo = Fifo::open(result_dir.path().join("events"))?;
        cmd.env("LONGRUN_EVENTS", &fifo.path);
        Some(fifo)
    } else {
        None
    };
    let mut child = cmd
        .spawn()
        .map_err(|e| RunError::new(format!("cannot start {:?}: {e}", argv[0])))?;
    let group = GroupGuard(child.id().map(|pid| Pid::from_raw(pid as i32)));

    let mut stdin = child.stdin.take().expect("stdin is piped");
    tokio::spawn(async move {
        // A program that never reads stdin closes it: a broken pipe here is fine.
        let _ = stdin.write_all(format!("{args_json}\n").as_bytes()).await;
    });
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let stderr_tail = tokio::spawn(async move {
        let mut tail = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 2 * STDERR_TAIL {
                tail.drain(..tail.len() - STDERR_TAIL);
            }
        }
        let start = tail.len().saturating_sub(STDERR_TAIL);
        String::from_utf8_lossy(&tail[start..]).into_owned()
    });
    let stdout = child.stdout.take().expect("stdout is piped");
    // Split on bytes, not UTF-8 lines: a line with invalid UTF-8 becomes U+FFFD (lossy), it
    // must not stop the reading of stdout.
    let (mut lines, mut raw) = if stream {
        (None, Some(stdout))
    } else {
        (Some(FramedRead::new(stdout, line_codec())), None)
    };
    let mut buf = bytes::BytesMut::new();
    let mut events_open = true;

    let mut status = None;
    let mut stdout_open = true;
    let mut terminated = false;
    while status.is_none() || stdout_open {
        tokio::select! {
            line = next_line(lines.as_mut()), if stdout_open && lines.is_some() => {
                if !take_line(&ctx, line, "stdout") {
                    stdout_open = false;
                }
            }
            read = read_chunk(&mut raw, &mut buf), if stdout_open && raw.is_some() => match read {
                Ok(Some(chunk)) => {
                    // Refused past the limit or once stopping: the run is being stopped
                    // (SIGTERM below); the rest is read and dropped, so the program is
                    // never blocked on a full pipe.
                    let _ = ctx.write(chunk);
                }
                Ok(None) => stdout_open = false,
                Err(e) => {
                    tracing::warn!(run = %ctx.id(), "reading stdout failed: {e}");
                    stdout_open = false;
                }
            },
            line = next_line(events.as_mut().map(|f| &mut f.lines)), if events_open && events.is_some() => {
                events_open = take_line(&ctx, line, "the events FIFO");
            }
            exit = child.wait(), if status.is_none() => {
                status = Some(exit.map_err(|e| RunError::new(format!("waiting for the program failed: {e}")))?);
                // The run is over when the program is; whatever it left running in its
                // group would keep stdout open forever.
                group.signal(Signal::SIGKILL);
            }
            _ = ctx.cancelled(), if !terminated => {
                terminated = true;
                group.signal(Signal::SIGTERM);
            }
        }
    }
    // The events the program wrote before it ended, up to our end mark.
    if let Some(fifo) = events.take() {
        fifo.drain(&ctx).await;
    }
    let stderr = stderr_tail.await.unwrap_or_default();
    let status = status.expect("loop ends after exit");
    if ctx.is_cancelled() {
        return Ok(Value::Null); // the server writes `canceled`
    }
    if status.success() {
        let raw = tokio::fs::read(&result_path).await.unwrap_or_default();
        return Ok(parse_output(&String::from_utf8_lossy(&raw)).unwrap_or(Value::Null));
    }
    use std::os::unix::process::ExitStatusExt;
    let err = match (status.code(), status.signal()) {
        (Some(code), _) => {
            RunError::new(format!("exited with status {code}")).with("exit_code", code)
        }
        (None, Some(sig)) => RunError::new(format!("killed by signal {sig}")).with("signal", sig),
        (None, None) => RunError::new("ended without an exit status"),
    };
    Err(err.with("stderr", stderr))
}

/// A line or result file: JSON if it parses, else the text (one trailing newline trimmed,
/// `\n` or `\r\n`); `None` when empty.
fn parse_output(text: &str) -> Option<Value> {
    let trimmed = text.strip_suffix('\n').unwrap_or(text);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    if trimmed.trim().is_empty() {
        return None;
    }
    Some(serde_json::from_str(trimmed).unwrap_or_else(|_| Value::String(trimmed.to_owned())))
}

fn emit_line(ctx: &RunContext, line: &str) {
    if let Some(value) = parse_output(line) {
        ctx.emit(value);
    }
}

type Lines<R> = FramedRead<R, StdoutLines>;

fn line_codec() -> StdoutLines {
    StdoutLines(AnyDelimiterCodec::new_with_max_length(
        b"\n".to_vec(),
        Vec::new(),
        MAX_LINE,
    ))
}

/// The next line of `lines` (never ready without them: the select guards that).
async fn next_line<R: tokio::io::AsyncRead + Unpin>(
    lines: Option<&mut Lines<R>>,
) -> Option<std::io::Result<Option<bytes::Bytes>>> {
    match lines {
        Some(lines) => lines.next().await,
        None => std::future::pending().await,
    }
}

/// Emit a line as an event; false once the source ended.
fn take_line(
    ctx: &RunContext,
    line: Option<std::io::Result<Option<bytes::Bytes>>>,
    source: &str,
) -> bool {
    match line {
        Some(Ok(Some(line))) => emit_line(ctx, &String::from_utf8_lossy(&line)),
        Some(Ok(None)) => {
            tracing::warn!(run = %ctx.id(), "dropped a line of {source} longer than {MAX_LINE} bytes");
        }
        Some(Err(e)) => {
            tracing::warn!(run = %ctx.id(), "reading {source} failed: {e}");
            return false;
        }
        None => return false,
    }
    true
}

/// The next chunk of raw stdout (`None` at its end), up to 64 KiB.
async fn read_chunk(
    raw: &mut Option<tokio::process::ChildStdout>,
    buf: &mut bytes::BytesMut,
) -> std::io::Result<Option<bytes::Bytes>> {
    let Some(raw) = raw else {
        return std::future::pending().await;
    };
    buf.reserve(64 * 1024);
    match raw.read_buf(buf).await? {
        0 => Ok(None),
        _ => Ok(Some(buf.split().freeze())),
    }
}

/// The events side channel of an exec object with a stream: a FIFO the program writes event
/// lines to (`LONGRUN_EVENTS`). The server holds a writer end too, so the reader never sees
/// an end while programs open and close it (`echo … > "$LONGRUN_EVENTS"` per line); once the
/// program is gone, that writer sends an end mark, and everything before it is read.
struct Fifo {
    path: PathBuf,
    lines: Lines<tokio::net::unix::pipe::Receiver>,
    writer: tokio::net::unix::pipe::Sender,
    mark: Vec<u8>,
}

impl Fifo {
    fn open(path: PathBuf) -> Result<Fifo, RunError> {
        use nix::sys::stat::Mode;
        use tokio::net::unix::pipe;
        let failed = |e: &dyn std::fmt::Display| {
            RunError::new(format!("cannot create the events FIFO: {e}"))
        };
        nix::unistd::mkfifo(&path, Mode::S_IRUSR | Mode::S_IWUSR).map_err(|e| failed(&e))?;
        let reader = pipe::OpenOptions::new()
            .open_receiver(&path)
            .map_err(|e| failed(&e))?;
        let writer = pipe::OpenOptions::new()
            .open_sender(&path)
            .map_err(|e| failed(&e))?;
        let mark = format!("\0longrun-end-{}\n", uuid::Uuid::new_v4()).into_bytes();
        Ok(Fifo {
            path,
            lines: FramedRead::new(reader, line_codec()),
            writer,
            mark,
        })
    }

    /// Write the end mark and emit every line before it.
    async fn drain(mut self, ctx: &RunContext) {
        if self.writer.write_all(&self.mark).await.is_err() {
            return;
        }
        let mark = &self.mark[..self.mark.len() - 1];
        while let Some(line) = self.lines.next().await {
            if let Ok(Some(line)) = &line {
                if &line[..] == mark {
                    return;
                }
            }
            if !take_line(ctx, Some(line), "the events FIFO") {
                return;
            }
        }
    }
}

/// stdout split into lines, an over-long line coming out as `None` instead of as an error:
/// `FramedRead` ends its stream after any decoder error, which would leave the rest of stdout
/// unread (and the program blocked on a full pipe).
struct StdoutLines(AnyDelimiterCodec);

impl StdoutLines {
    fn lift(
        line: Result<Option<bytes::Bytes>, AnyDelimiterCodecError>,
    ) -> std::io::Result<Option<Option<bytes::Bytes>>> {
        match line {
            Ok(line) => Ok(line.map(Some)),
            Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => Ok(Some(None)),
            Err(AnyDelimiterCodecError::Io(e)) => Err(e),
        }
    }
}

impl Decoder for StdoutLines {
    type Item = Option<bytes::Bytes>;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut bytes::BytesMut) -> std::io::Result<Option<Self::Item>> {
        Self::lift(self.0.decode(buf))
    }

    fn decode_eof(&mut self, buf: &mut bytes::BytesMut) -> std::io::Result<Option<Self::Item>> {
        Self::lift(self.0.decode_eof(buf))
    }
}
