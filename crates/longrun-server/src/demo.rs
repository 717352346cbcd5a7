//! Deterministic demo objects, used by the conformance scenarios and the README.
//! Their exact behaviour is part of `spec/PROTOCOL.md` ("Demo objects").

use std::marker::PhantomData;
use std::time::Duration;

use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::ServerBuilder;
use crate::catalogue::Kind;
use crate::handler::{Handler, HandlerResult, ObjectOptions, RunContext, RunError};

pub(crate) fn register(builder: ServerBuilder) -> ServerBuilder {
    let described = |text: &str| ObjectOptions::default().describe(text);
    builder
        .object_of_kind(
            "echo",
            Kind::Builtin,
            described("Succeeds at once with its arguments as the value."),
            |args: Value, _ctx: RunContext| async move { Ok(args) },
        )
        .object_of_kind(
            "count",
            Kind::Builtin,
            described("Emits n running events with progress, interval_ms apart, then succeeds with {\"n\": n}.")
                .args::<CountArgs>(),
            Typed::new(count),
        )
        .object_of_kind(
            "sleep",
            Kind::Builtin,
            described("Succeeds with {\"slept_ms\": ms} after ms milliseconds; no running event.")
                .args::<SleepArgs>(),
            Typed::new(sleep),
        )
        .object_of_kind(
            "fail",
            Kind::Builtin,
            described("Ends error at once with {\"message\": message}.").args::<FailArgs>(),
            Typed::new(fail),
        )
        .object_of_kind(
            "emit",
            Kind::Builtin,
            described("Emits each of events as a running event, then succeeds with result.")
                .args::<EmitArgs>(),
            Typed::new(emit),
        )
        .object_of_kind(
            "ephemeral",
            Kind::Builtin,
            ObjectOptions {
                retention: Some(Duration::ZERO),
                ..described("Succeeds with {} once the run has had a follower; retention 0.")
            },
            |_args: Value, ctx: RunContext| async move {
                ctx.followed().await;
                Ok(json!({}))
            },
        )
        .object_of_kind(
            "bytes",
            Kind::Builtin,
            ObjectOptions {
                stream: Some(crate::stream::DEFAULT_CONTENT_TYPE.to_owned()),
                ..described("Writes n bytes (byte i is i mod 251) to its byte stream in writes of chunk bytes, then succeeds with {\"n\", \"sha256\"}.")
                    .args::<BytesArgs>()
            },
            Typed::new(bytes),
        )
}

/// Arguments of a demo object: parsed (unknown fields rejected) and range-checked at submit
/// time, so a bad call is a 422 rather than a failed run.
trait Args: DeserializeOwned + Send + 'static {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

struct Typed<A, F> {
    run: F,
    _args: PhantomData<fn() -> A>,
}

impl<A, F> Typed<A, F> {
    fn new(run: F) -> Self {
        Typed {
            run,
            _args: PhantomData,
        }
    }
}

fn parse<A: Args>(args: &Map<String, Value>) -> Result<A, String> {
    let parsed: A =
        serde_json::from_value(Value::Object(args.clone())).map_err(|e| e.to_string())?;
    parsed.check()?;
    Ok(parsed)
}

impl<A, F, Fut> Handler for Typed<A, F>
where
    A: Args,
    F: Fn(A, RunContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn validate(&self, args: &Map<String, Value>) -> Result<(), String> {
        parse::<A>(args).map(drop)
    }

    fn start(&self, args: Value, ctx: RunContext) -> BoxFuture<'static, HandlerResult> {
        let parsed = match args {
            Value::Object(map) => parse::<A>(&map),
            _ => Err("arguments must be an object".to_owned()),
        };
        match parsed {
            Ok(a) => Box::pin((self.run)(a, ctx)),
            Err(e) => Box::pin(async move { Err(RunError::new(e)) }),
        }
    }
}

/// Yield to the runtime every so often, so a handler emitting a million events in a loop
/// does not hold a worker thread.
async fn breathe(i: u64) {
    if i % 512 == 0 {
        tokio::task::yield_now().await;
    }
}

/// Largest `n` for `count`: a run of that size stays well inside the default event limit.
const MAX_COUNT: u64 = 100_000;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CountArgs {
    /// How many running events.
    #[serde(default = "three")]
    #[schemars(range(max = MAX_COUNT))]
    n: u64,
    /// Milliseconds between two events.
    #[serde(default)]
    #[schemars(range(max = 60_000))]
    interval_ms: u64,
}

fn three() -> u64 {
    3
}

impl Args for CountArgs {
    fn check(&self) -> Result<(), String> {
        if self.n > MAX_COUNT {
            return Err(format!("n must be at most {MAX_COUNT}, got {}", self.n));
        }
        if self.interval_ms > 60_000 {
            return Err(format!(
                "interval_ms must be at most 60000, got {}",
                self.interval_ms
            ));
        }
        Ok(())
    }
}

async fn count(args: CountArgs, ctx: RunContext) -> HandlerResult {
    let n = args.n;
    for i in 1..=n {
        // The first event comes at once, the others `interval_ms` apart: with a long interval
        // a run is held in `running` at a known point, which scenarios rely on.
        if args.interval_ms > 0 && i > 1 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(args.interval_ms)) => {}
                _ = ctx.cancelled() => return Ok(Value::Null),
            }
        } else {
            breathe(i).await;
        }
        let value =
            json!({"i": i, "n": n, "progress": i as f64 / n as f64, "message": format!("{i}/{n}")});
        if !ctx.emit(value) {
            return Ok(Value::Null); // stopping: the server writes the terminal event
        }
    }
    Ok(json!({ "n": n }))
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SleepArgs {
    /// Milliseconds to sleep.
    #[serde(default = "one_second")]
    #[schemars(range(max = 3_600_000))]
    ms: u64,
}

fn one_second() -> u64 {
    1000
}

impl Args for SleepArgs {
    fn check(&self) -> Result<(), String> {
        if self.ms > 3_600_000 {
            return Err(format!("ms must be at most 3600000, got {}", self.ms));
        }
        Ok(())
    }
}

async fn sleep(args: SleepArgs, ctx: RunContext) -> HandlerResult {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(args.ms)) => Ok(json!({ "slept_ms": args.ms })),
        _ = ctx.cancelled() => Ok(Value::Null),
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FailArgs {
    /// The error's message.
    #[serde(default = "failed")]
    message: String,
}

fn failed() -> String {
    "failed".to_owned()
}

impl Args for FailArgs {}

async fn fail(args: FailArgs, _ctx: RunContext) -> HandlerResult {
    Err(RunError::new(args.message))
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct EmitArgs {
    /// The values of the running events, in order.
    #[serde(default)]
    events: Vec<Value>,
    /// The success value.
    #[serde(default)]
    result: Value,
}

impl Args for EmitArgs {}

async fn emit(args: EmitArgs, ctx: RunContext) -> HandlerResult {
    for (i, value) in args.events.into_iter().enumerate() {
        breathe(i as u64 + 1).await;
        if !ctx.emit(value) {
            return Ok(Value::Null);
        }
    }
    Ok(args.result)
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct BytesArgs {
    /// How many bytes to write.
    #[serde(default = "one_mebibyte")]
    #[schemars(range(max = u64::MAX))]
    n: u64,
    /// Bytes per write.
    #[serde(default = "sixty_four_kibibytes")]
    #[schemars(range(min = 1, max = MAX_CHUNK))]
    chunk: usize,
    /// Milliseconds between two writes.
    #[serde(default)]
    #[schemars(range(max = 60_000))]
    interval_ms: u64,
}

fn one_mebibyte() -> u64 {
    1024 * 1024
}

fn sixty_four_kibibytes() -> usize {
    64 * 1024
}

/// Largest `chunk` of `bytes`.
const MAX_CHUNK: usize = 16 * 1024 * 1024;

impl Args for BytesArgs {
    fn check(&self) -> Result<(), String> {
        if self.chunk == 0 || self.chunk > MAX_CHUNK {
            return Err(format!(
                "chunk must be 1 to {MAX_CHUNK}, got {}",
                self.chunk
            ));
        }
        if self.interval_ms > 60_000 {
            return Err(format!(
                "interval_ms must be at most 60000, got {}",
                self.interval_ms
            ));
        }
        Ok(())
    }
}

/// Byte `i` of the `bytes` demo's stream (spec §18): `i mod 251`, a pattern whose period is
/// no power of two, so a chunk out of place changes the hash.
fn pattern(from: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| ((from + i) % 251) as u8).collect()
}

async fn bytes(args: BytesArgs, ctx: RunContext) -> HandlerResult {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    let mut written = 0u64;
    let mut i = 0u64;
    while written < args.n {
        if args.interval_ms > 0 && written > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(args.interval_ms)) => {}
                _ = ctx.cancelled() => return Ok(Value::Null),
            }
        } else {
            i += 1;
            breathe(i).await;
        }
        let len = (args.n - written).min(args.chunk as u64) as usize;
        let chunk = pattern(written, len);
        hash.update(&chunk);
        if ctx.write(chunk).is_err() {
            return Ok(Value::Null); // stopping: the server writes the terminal event
        }
        written += len as u64;
    }
    Ok(json!({ "n": written, "sha256": crate::auth::hex(&hash.finalize()) }))
}
