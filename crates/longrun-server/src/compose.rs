//! Compositions (spec §25.10): gilmour's `pipe`, `andand`, `oror`, `batch` and `parallel` over
//! node service topics, with `with` merges and declared `lambda` transforms (no code runs on
//! the server). A composition runs as a run of the reserved object `_compose`, whose `running`
//! events report each step, or inside a node-side request (`POST /_nodes/{id}/request` with
//! `composition`), answered with gilmour's messages.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::{BoxFuture, join_all};
use longrun_proto::{ObjectName, ProblemKind};
use serde_json::{Map, Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::{Caller, Scope};
use crate::handler::{Handler, HandlerResult, Object, ObjectOptions, RunContext, RunError};
use crate::http::ApiError;
use crate::nodes::{Call, Nodes, Outcome};
use crate::run::Run;

/// The reserved object whose runs are compositions.
pub(crate) const OBJECT: &str = "_compose";
/// Compositions nested in one another, at most (a composition of steps only is depth 1).
pub(crate) const MAX_DEPTH: usize = 8;
/// Steps (topics and lambdas) in one composition, at most, counted over every level.
pub(crate) const MAX_STEPS: usize = 64;

/// gilmour's `{data, code}` message, as `(code, data)`.
pub(crate) type Message = (u16, Value);

const CODE_OK: u16 = 200;
/// A `with` or a lambda that does not apply to its input (e.g. a merge into a list).
const CODE_INAPPLICABLE: u16 = 422;
/// The composition was stopped (canceled, or the request's timeout passed): gilmour's timeout
/// code, as [`Outcome::code`] gives it.
const CODE_STOPPED: u16 = 499;

const KINDS: &str = "topic, lambda, pipe, andand, oror, batch, parallel";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pipe,
    AndAnd,
    OrOr,
    Batch { all: bool },
    Parallel,
}

/// A declared transform of a step's input.
#[derive(Debug)]
enum Lambda {
    /// The value at this JSON pointer (RFC 6901) of the input.
    Pick(String),
    /// The input object with these members set.
    Set(Map<String, Value>),
    /// `{key: input}`.
    Wrap(String),
    /// This value, whatever the input.
    Const(Value),
}

#[derive(Debug)]
enum What {
    Topic(String),
    Lambda(Lambda),
    Group(Kind, Vec<Spec>),
}

#[derive(Debug)]
struct Spec {
    what: What,
    with: Option<Map<String, Value>>,
    /// A topic's or a lambda's number, 1-based, depth first in the document; 0 for a group.
    step: usize,
}

/// A validated composition.
#[derive(Debug)]
pub(crate) struct Composition {
    root: Spec,
    steps: usize,
}

impl Composition {
    /// Validate the whole document: every error is found before anything runs.
    pub(crate) fn parse(value: &Value) -> Result<Composition, String> {
        let mut steps = 0;
        let root = parse(value, "", 0, &mut steps)?;
        Ok(Composition { root, steps })
    }
}

impl Spec {
    /// Call `f` with every topic, depth first, until it fails.
    fn each_topic<E>(&self, f: &mut impl FnMut(&str) -> Result<(), E>) -> Result<(), E> {
        match &self.what {
            What::Topic(topic) => f(topic),
            What::Lambda(_) => Ok(()),
            What::Group(_, children) => children.iter().try_for_each(|c| c.each_topic(f)),
        }
    }
}

fn place(at: &str) -> String {
    if at.is_empty() {
        "the composition".to_owned()
    } else {
        format!("the step at {at}")
    }
}

/// One step at JSON pointer `at`, inside `depth` compositions; `steps` counts the leaves.
fn parse(value: &Value, at: &str, depth: usize, steps: &mut usize) -> Result<Spec, String> {
    let here = place(at);
    let Value::Object(map) = value else {
        return Err(format!("{here} is {value}, not a JSON object"));
    };
    let (mut with, mut all, mut kinds) = (None, None, Vec::new());
    for (key, v) in map {
        match key.as_str() {
            "with" => match v {
                Value::Object(m) => with = Some(m.clone()),
                _ => return Err(format!("{here}: with must be a JSON object, not {v}")),
            },
            "all" => match v {
                Value::Bool(b) => all = Some(*b),
                _ => return Err(format!("{here}: all must be true or false, not {v}")),
            },
            "topic" | "lambda" | "pipe" | "andand" | "oror" | "batch" | "parallel" => {
                kinds.push((key.as_str(), v))
            }
            other => {
                return Err(format!(
                    "{here}: unknown member {other:?} (a step has one of {KINDS}, and may have with)"
                ));
            }
        }
    }
    let [(kind, v)] = kinds[..] else {
        return Err(format!(
            "{here} needs exactly one of {KINDS}; it has {}",
            kinds.len()
        ));
    };
    if all.is_some() && kind != "batch" {
        return Err(format!("{here}: all goes with batch only"));
    }
    let leaf = |steps: &mut usize| {
        *steps += 1;
        if *steps > MAX_STEPS {
            Err(format!("the composition has more than {MAX_STEPS} steps"))
        } else {
            Ok(*steps)
        }
    };
    let (what, step) = match kind {
        "topic" => {
            let topic = v.as_str().unwrap_or_default();
            if !ObjectName::is_valid(topic) {
                return Err(format!(
                    "{here}: topic {v} is not a valid object name (letters, digits, . _ -, \
                     starting with a letter or digit)"
                ));
            }
            (What::Topic(topic.to_owned()), leaf(steps)?)
        }
        "lambda" => (What::Lambda(Lambda::parse(v, &here)?), leaf(steps)?),
        group => {
            let Value::Array(list) = v else {
                return Err(format!("{here}: {group} must be a list of steps, not {v}"));
            };
            if list.is_empty() {
                return Err(format!("{here}: {group} has no steps"));
            }
            if depth + 1 > MAX_DEPTH {
                return Err(format!(
                    "{here}: compositions nest at most {MAX_DEPTH} deep"
                ));
            }
            let kind = match group {
                "pipe" => Kind::Pipe,
                "andand" => Kind::AndAnd,
                "oror" => Kind::OrOr,
                "batch" => Kind::Batch {
                    all: all.unwrap_or(false),
                },
                _ => Kind::Parallel,
            };
            let children = list
                .iter()
                .enumerate()
                .map(|(i, s)| parse(s, &format!("{at}/{group}/{i}"), depth + 1, steps))
                .collect::<Result<Vec<_>, _>>()?;
            (What::Group(kind, children), 0)
        }
    };
    Ok(Spec { what, with, step })
}

impl Lambda {
    fn parse(value: &Value, here: &str) -> Result<Lambda, String> {
        let bad = || {
            format!(
                "{here}: lambda is one of {{\"pick\": \"/json/pointer\"}}, {{\"set\": {{…}}}}, \
                 {{\"wrap\": \"key\"}}, {{\"const\": value}}, not {value}"
            )
        };
        let Value::Object(map) = value else {
            return Err(bad());
        };
        let mut members = map.iter();
        let (Some((op, arg)), None) = (members.next(), members.next()) else {
            return Err(bad());
        };
        Ok(match (op.as_str(), arg) {
            ("pick", Value::String(p)) if p.is_empty() || p.starts_with('/') => {
                Lambda::Pick(p.clone())
            }
            ("set", Value::Object(m)) => Lambda::Set(m.clone()),
            ("wrap", Value::String(k)) if !k.is_empty() => Lambda::Wrap(k.clone()),
            ("const", v) => Lambda::Const(v.clone()),
            _ => return Err(bad()),
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Lambda::Pick(_) => "pick",
            Lambda::Set(_) => "set",
            Lambda::Wrap(_) => "wrap",
            Lambda::Const(_) => "const",
        }
    }

    fn apply(&self, input: Value) -> Message {
        match self {
            Lambda::Pick(pointer) => match input.pointer(pointer) {
                Some(v) => (CODE_OK, v.clone()),
                None => (
                    CODE_INAPPLICABLE,
                    json!({"message": format!("lambda pick: the input has no value at {pointer:?}")}),
                ),
            },
            Lambda::Set(members) => merge(input, members, "lambda set"),
            Lambda::Wrap(key) => {
                let mut map = Map::new();
                map.insert(key.clone(), input);
                (CODE_OK, Value::Object(map))
            }
            Lambda::Const(v) => (CODE_OK, v.clone()),
        }
    }
}

/// `input` with `members` set (a `null` input counts as `{}`), or a 422 message when the
/// input is not an object.
fn merge(input: Value, members: &Map<String, Value>, what: &str) -> Message {
    let mut map = match input {
        Value::Null => Map::new(),
        Value::Object(map) => map,
        other => {
            return (
                CODE_INAPPLICABLE,
                json!({"message": format!("{what}: the input is {other}, not an object")}),
            );
        }
    };
    map.extend(members.iter().map(|(k, v)| (k.clone(), v.clone())));
    (CODE_OK, Value::Object(map))
}

fn is_success(code: u16) -> bool {
    (200..300).contains(&code)
}

/// Several messages as one (a batch with `all` or a parallel inside another composition):
/// the highest code, and the list of `{data, code}`.
fn collapse(mut messages: Vec<Message>) -> Message {
    if messages.len() == 1 {
        return messages.pop().expect("one message");
    }
    let code = messages.iter().map(|(c, _)| *c).max().unwrap_or(CODE_OK);
    (code, list(messages))
}

fn list(messages: Vec<Message>) -> Value {
    messages
        .into_iter()
        .map(|(code, data)| json!({"data": data, "code": code}))
        .collect()
}

/// The composition was stopped: nothing more runs.
struct Stopped;

struct Exec<'a> {
    nodes: &'a Arc<Nodes>,
    run: Option<&'a Arc<Run>>,
    cancel: &'a CancellationToken,
    deadline: Option<Instant>,
    steps: usize,
    ended: AtomicUsize,
}

impl Exec<'_> {
    fn stopped(&self) -> bool {
        self.cancel.is_cancelled() || self.deadline.is_some_and(|at| Instant::now() >= at)
    }

    fn eval<'s>(
        &'s self,
        spec: &'s Spec,
        input: Value,
    ) -> BoxFuture<'s, Result<Vec<Message>, Stopped>> {
        Box::pin(async move {
            if self.stopped() {
                return Err(Stopped);
            }
            let input = match &spec.with {
                None => input,
                Some(with) => match merge(input, with, "with") {
                    (CODE_OK, merged) => merged,
                    failed => return Ok(vec![failed]),
                },
            };
            match &spec.what {
                What::Topic(topic) => Ok(vec![self.topic(spec.step, topic, input).await?]),
                What::Lambda(lambda) => {
                    let label = format!("lambda {}", lambda.name());
                    let name = ("lambda", lambda.name());
                    self.report(spec.step, &label, name, None);
                    let message = lambda.apply(input);
                    self.report(spec.step, &label, name, Some(message.0));
                    Ok(vec![message])
                }
                What::Group(kind, children) => self.group(*kind, children, input).await,
            }
        })
    }

    async fn topic(&self, step: usize, topic: &str, input: Value) -> Result<Message, Stopped> {
        self.report(step, topic, ("topic", topic), None);
        let call = Call {
            run: self.run,
            cancel: self.cancel,
            deadline: self.deadline,
        };
        let outcome = self.nodes.call(topic, input, call).await;
        // A service timeout is the step's 499; a cancel or the whole request's timeout stops
        // the composition.
        if matches!(outcome, Outcome::Canceled)
            || (matches!(outcome, Outcome::TimedOut) && self.stopped())
        {
            return Err(Stopped);
        }
        let message = (outcome.code(), outcome.data(topic));
        self.report(step, topic, ("topic", topic), Some(message.0));
        Ok(message)
    }

    async fn group(
        &self,
        kind: Kind,
        children: &[Spec],
        input: Value,
    ) -> Result<Vec<Message>, Stopped> {
        match kind {
            Kind::Parallel => join_all(children.iter().map(|c| self.eval(c, input.clone())))
                .await
                .into_iter()
                .map(|r| r.map(collapse))
                .collect(),
            Kind::Batch { all } => {
                let mut out = Vec::with_capacity(children.len());
                for child in children {
                    out.push(collapse(self.eval(child, input.clone()).await?));
                }
                if !all {
                    out.drain(..out.len() - 1);
                }
                Ok(out)
            }
            Kind::Pipe | Kind::AndAnd | Kind::OrOr => {
                // For a pipe, the previous step's output.
                let mut carried = input.clone();
                let mut last = None;
                for child in children {
                    let arg = match kind {
                        Kind::Pipe => std::mem::take(&mut carried),
                        _ => input.clone(),
                    };
                    let message = collapse(self.eval(child, arg).await?);
                    let stop = match kind {
                        Kind::OrOr => is_success(message.0),
                        _ => !is_success(message.0),
                    };
                    if stop {
                        return Ok(vec![message]);
                    }
                    if kind == Kind::Pipe {
                        carried = message.1.clone();
                    }
                    last = Some(message);
                }
                Ok(vec![last.expect("a composition has steps")])
            }
        }
    }

    /// A step's `running` event: when it starts (`code` none) and when it ends.
    fn report(&self, step: usize, label: &str, (key, name): (&str, &str), code: Option<u16>) {
        let Some(run) = self.run else {
            return;
        };
        let steps = self.steps;
        let mut event = Map::new();
        event.insert("step".into(), step.into());
        event.insert("steps".into(), steps.into());
        event.insert(key.into(), name.into());
        let message = match code {
            None => format!("step {step}/{steps} started: {label}"),
            Some(code) => {
                let ended = self.ended.fetch_add(1, Ordering::SeqCst) + 1;
                event.insert("code".into(), code.into());
                event.insert("progress".into(), (ended as f64 / steps as f64).into());
                format!("step {step}/{steps} ended: {label}, code {code}")
            }
        };
        event.insert("message".into(), message.into());
        run.emit(Value::Object(event));
    }
}

/// Run `composition` on `message`: its messages (one, or several for a batch with `all` and
/// a parallel), or one 499 message when it was stopped (`cancel`, or `deadline`).
pub(crate) async fn execute(
    nodes: &Arc<Nodes>,
    composition: &Composition,
    message: Value,
    run: Option<&Arc<Run>>,
    cancel: &CancellationToken,
    deadline: Option<Instant>,
) -> Vec<Message> {
    let exec = Exec {
        nodes,
        run,
        cancel,
        deadline,
        steps: composition.steps,
        ended: AtomicUsize::new(0),
    };
    match exec.eval(&composition.root, message).await {
        Ok(messages) => messages,
        Err(Stopped) => {
            let why = if cancel.is_cancelled() {
                "the composition was canceled"
            } else {
                "the request's timeout passed"
            };
            vec![(CODE_STOPPED, json!({ "message": why }))]
        }
    }
}

/// The 422 of a composition that is not valid.
pub(crate) fn invalid(detail: String) -> ApiError {
    ApiError::new(ProblemKind::InvalidComposition, detail)
}

/// The problem of arguments that `object`'s handler refused.
pub(crate) fn refused_arguments(object: &str) -> ProblemKind {
    if object == OBJECT {
        ProblemKind::InvalidComposition
    } else {
        ProblemKind::InvalidArguments
    }
}

/// With tenants, a `_compose` run calls only topics its caller may submit to: 403 for the
/// first one it may not (arguments that are not valid are left to the handler's check).
pub(crate) fn require_topics(caller: &Caller, args: &Map<String, Value>) -> Result<(), ApiError> {
    match arguments(args) {
        Ok((composition, _)) => composition
            .root
            .each_topic(&mut |topic| caller.require(Scope::Submit, topic)),
        Err(_) => Ok(()),
    }
}

/// The `_compose` object over this replica's nodes.
pub(crate) fn object(nodes: &Arc<Nodes>) -> Object {
    Object {
        handler: Arc::new(Compose {
            nodes: nodes.clone(),
        }),
        options: ObjectOptions::default(),
        entry: crate::catalogue::COMPOSE.clone(),
    }
}

struct Compose {
    nodes: Arc<Nodes>,
}

/// The arguments of a `_compose` run: `{composition, message}`.
fn arguments(args: &Map<String, Value>) -> Result<(Composition, Value), String> {
    if let Some(other) = args
        .keys()
        .find(|k| !matches!(k.as_str(), "composition" | "message"))
    {
        return Err(format!(
            "unknown member {other:?}: the arguments are {{composition, message}}"
        ));
    }
    let Some(composition) = args.get("composition") else {
        return Err("the arguments need a composition".into());
    };
    let message = args.get("message").cloned().unwrap_or(Value::Null);
    Ok((Composition::parse(composition)?, message))
}

impl Handler for Compose {
    fn validate(&self, args: &Map<String, Value>) -> Result<(), String> {
        arguments(args).map(|_| ())
    }

    fn start(&self, args: Value, ctx: RunContext) -> BoxFuture<'static, HandlerResult> {
        let nodes = self.nodes.clone();
        Box::pin(async move {
            let Value::Object(args) = args else {
                return Err(RunError::new("the arguments are not an object"));
            };
            let (composition, message) = arguments(&args).map_err(RunError::new)?;
            let cancel = ctx.cancel_token();
            let messages =
                execute(&nodes, &composition, message, Some(&ctx.run), &cancel, None).await;
            result(messages)
        })
    }
}

/// A run's end: `success` with the data (the list of `{data, code}` for several messages)
/// when the highest code is 2xx, else `error` `{message, code, data}`.
fn result(messages: Vec<Message>) -> HandlerResult {
    let code = messages.iter().map(|(c, _)| *c).max().unwrap_or(CODE_OK);
    let failed = messages.iter().filter(|(c, _)| !is_success(*c)).count();
    let total = messages.len();
    let message = match &messages[..] {
        [(_, data)] => data
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    };
    let (_, data) = collapse(messages);
    if is_success(code) {
        return Ok(data);
    }
    let message = message.unwrap_or_else(|| match total {
        1 => format!("the composition failed with code {code}"),
        _ => format!("{failed} of {total} messages failed; the highest code is {code}"),
    });
    Err(RunError::new(message).with("code", code).with("data", data))
}
