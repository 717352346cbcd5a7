//! A blocking client with the same verbs, for callers without an async runtime (Python's
//! sync API, the C ABI). It owns a small tokio runtime and drives the async client on it,
//! as mini-redis's blocking client does.
//!
//! Every method may be called from any thread, at the same time.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;

use crate::{
    CancelOutcome, ClientBuilder, Error, Event, EventStream, FollowOptions, RawEvent, Result, Run,
    RunStatus, SubmitOptions,
};

#[derive(Clone, Debug)]
pub struct Client {
    inner: crate::Client,
    rt: Arc<tokio::runtime::Runtime>,
}

impl Client {
    pub fn new(base_url: &str) -> Result<Client> {
        Self::from_builder(ClientBuilder::new(base_url))
    }

    pub fn from_builder(builder: ClientBuilder) -> Result<Client> {
        // One worker thread drives the I/O, so `block_on` from any number of caller threads
        // works and a blocked caller never stops another's connections.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("longrun-client")
            .enable_all()
            .build()
            .map_err(|e| Error::Transport {
                message: format!("cannot start the client runtime: {e}"),
            })?;
        let _guard = rt.enter();
        Ok(Client {
            inner: builder.build()?,
            rt: Arc::new(rt),
        })
    }

    /// The async client underneath (sharing connections with this one).
    pub fn as_async(&self) -> &crate::Client {
        &self.inner
    }

    pub fn run(&self, object: &str, id: &str) -> Result<Run> {
        self.inner.run(object, id)
    }

    pub fn submit(&self, object: &str, args: impl Serialize) -> Result<Run> {
        self.rt.block_on(self.inner.submit(object, args))
    }

    pub fn submit_with(
        &self,
        object: &str,
        args: impl Serialize,
        options: SubmitOptions,
    ) -> Result<Run> {
        self.rt
            .block_on(self.inner.submit_with(object, args, options))
    }

    /// [`Client::call`](crate::Client::call): submit, and the run's outcome, in one exchange
    /// when it ends within the server's wait.
    pub fn call(
        &self,
        object: &str,
        args: impl Serialize,
        options: SubmitOptions,
        timeout: Option<Duration>,
    ) -> Result<Value> {
        self.rt
            .block_on(self.inner.call(object, args, options, timeout))
    }

    pub fn follow(&self, run: &Run) -> Events {
        self.follow_with(run, FollowOptions::default())
    }

    pub fn follow_from(&self, run: &Run, cursor: u64) -> Events {
        self.follow_with(
            run,
            FollowOptions {
                since: Some(cursor),
                ..Default::default()
            },
        )
    }

    pub fn follow_with(&self, run: &Run, options: FollowOptions) -> Events {
        let _guard = self.rt.enter();
        Events {
            // Read ahead on the runtime's worker: between two calls the caller's thread is
            // busy with what it got, and nothing else would read the connection.
            stream: self.inner.follow_with(run, options).read_ahead(),
            rt: self.rt.clone(),
        }
    }

    /// Read a run's byte stream (spec §27) as a [`std::io::Read`], resuming after a
    /// disconnect as [`crate::Client::stream`] does.
    pub fn stream(&self, run: &Run) -> crate::StreamReader {
        let _guard = self.rt.enter();
        crate::StreamReader::new(self.inner.stream(run), self.rt.clone())
    }

    pub fn cancel(&self, run: &Run) -> Result<CancelOutcome> {
        self.rt.block_on(self.inner.cancel(run))
    }

    pub fn status(&self, run: &Run) -> Result<RunStatus> {
        self.rt.block_on(self.inner.status(run))
    }

    /// [`Client::list_runs`](crate::Client::list_runs): one page of runs, newest first.
    pub fn list_runs(&self, query: &crate::ListRuns) -> Result<crate::RunPage> {
        self.rt.block_on(self.inner.list_runs(query))
    }

    pub fn exists(&self, run: &Run) -> Result<bool> {
        self.rt.block_on(self.inner.exists(run))
    }

    /// Every object of the server with its arguments' schema (spec §13.6).
    pub fn objects(&self) -> Result<Vec<crate::ObjectInfo>> {
        self.rt.block_on(self.inner.objects())
    }

    /// One object of the server; a `NotFound` error when it has none of this name.
    pub fn object(&self, name: &str) -> Result<crate::ObjectInfo> {
        self.rt.block_on(self.inner.object(name))
    }

    pub fn wait(&self, run: &Run, timeout: Option<Duration>) -> Result<Value> {
        self.rt.block_on(self.inner.wait(run, timeout))
    }

    pub fn wait_or_cancel(&self, run: &Run, timeout: Duration) -> Result<Value> {
        self.rt.block_on(self.inner.wait_or_cancel(run, timeout))
    }

    /// [`Client::wait`] as a handle that is driven in slices ([`Waiting::next_timeout`]), so
    /// a caller can check its own interruption (Ctrl-C, a Go context) between them.
    pub fn waiting(&self, run: &Run, timeout: Option<Duration>) -> Waiting {
        let client = self.inner.clone();
        let run = run.clone();
        Waiting {
            wait: Some(Box::pin(async move { client.wait(&run, timeout).await })),
            rt: self.rt.clone(),
        }
    }

    /// [`Client::call`] as a handle driven in slices, like [`Client::waiting`]. The
    /// arguments are serialized now; a failure is the handle's outcome.
    pub fn calling(
        &self,
        object: &str,
        args: impl Serialize,
        options: SubmitOptions,
        timeout: Option<Duration>,
    ) -> Waiting {
        let client = self.inner.clone();
        let object = object.to_owned();
        let args = serde_json::to_value(args)
            .map_err(|e| Error::invalid(format!("the arguments do not serialize to JSON: {e}")));
        Waiting {
            wait: Some(Box::pin(async move {
                client.call(&object, args?, options, timeout).await
            })),
            rt: self.rt.clone(),
        }
    }

    /// [`Client::subscribe`](crate::Client::subscribe), taken in slices
    /// ([`Publications::ready_timeout`], [`Publications::next_timeout`]).
    pub fn subscribe(&self, topic: &str, since: Option<u64>) -> Publications {
        Publications {
            subscription: self.inner.subscribe(topic, since),
            rt: self.rt.clone(),
        }
    }

    /// [`Client::publish`](crate::Client::publish): the publication's offset.
    pub fn publish(&self, topic: &str, data: &Value) -> Result<u64> {
        self.rt.block_on(self.inner.publish(topic, data))
    }

    /// A run's byte stream as chunks taken in slices ([`Chunks::next_timeout`]), for callers
    /// that check their own interruption between them; [`Client::stream`] is the `Read`.
    pub fn stream_chunks(&self, run: &Run) -> Chunks {
        Chunks {
            stream: self.inner.stream(run),
            rt: self.rt.clone(),
        }
    }
}

/// A subscription taken in slices; see [`Client::subscribe`]. Dropping it unsubscribes.
pub struct Publications {
    subscription: crate::Subscription,
    rt: Arc<tokio::runtime::Runtime>,
}

impl Publications {
    /// Wait at most `timeout` for the server's ack ([`Subscription::ready`]): `Next::Pending`
    /// loses nothing.
    ///
    /// [`Subscription::ready`]: crate::Subscription::ready
    pub fn ready_timeout(&mut self, timeout: Duration) -> Next<Result<crate::Subscribed>> {
        match self
            .rt
            .block_on(crate::rt::timeout(timeout, self.subscription.ready()))
        {
            Some(acked) => Next::Item(acked),
            None => Next::Pending,
        }
    }

    /// Wait at most `timeout` for the next publication: `Next::Pending` loses nothing.
    pub fn next_timeout(&mut self, timeout: Duration) -> Next<Result<crate::Publication>> {
        next_within(&self.rt, &mut self.subscription, timeout)
    }
}

/// The chunks of a run's byte stream; see [`Client::stream_chunks`]. Every byte once, in
/// order, resumed after disconnects; an `Err` item is final.
pub struct Chunks {
    stream: crate::ByteStream,
    rt: Arc<tokio::runtime::Runtime>,
}

impl Chunks {
    /// Wait at most `timeout` for the next chunk: `Next::Pending` loses nothing.
    pub fn next_timeout(&mut self, timeout: Duration) -> Next<Result<bytes::Bytes>> {
        next_within(&self.rt, &mut self.stream, timeout)
    }
}

type BoxedWait = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value>> + Send>>;

/// A wait in progress; see [`Client::waiting`]. Dropping it stops waiting (the run goes on).
pub struct Waiting {
    wait: Option<BoxedWait>,
    rt: Arc<tokio::runtime::Runtime>,
}

impl Waiting {
    /// Wait at most `slice` more for the outcome: `Next::Item` with it, `Next::Pending`
    /// (nothing lost; call again), or `Next::End` once the outcome was handed out. The wait's
    /// own timeout counts from the first call.
    pub fn next_timeout(&mut self, slice: Duration) -> Next<Result<Value>> {
        let Some(wait) = self.wait.as_mut() else {
            return Next::End;
        };
        match self.rt.block_on(crate::rt::timeout(slice, wait.as_mut())) {
            Some(outcome) => {
                self.wait = None;
                Next::Item(outcome)
            }
            None => Next::Pending,
        }
    }
}

/// The events of a follow, as a blocking iterator. Ends after the terminal event; an `Err`
/// item is final.
pub struct Events {
    stream: EventStream,
    rt: Arc<tokio::runtime::Runtime>,
}

impl Iterator for Events {
    type Item = Result<Event>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rt.block_on(self.stream.next())
    }
}

/// What [`Events::next_timeout`] found.
#[derive(Debug)]
pub enum Next<T> {
    Item(T),
    /// The follow is over.
    End,
    /// Nothing within the time given; the follow goes on and the next call picks up there.
    Pending,
}

impl Events {
    /// Wait at most `timeout` for the next event. Nothing is lost when the time runs out, so
    /// a caller can wait in slices and check its own interruption (Ctrl-C, a Go context)
    /// between them.
    pub fn next_timeout(&mut self, timeout: Duration) -> Next<Result<Event>> {
        next_within(&self.rt, &mut self.stream, timeout)
    }

    /// Like [`EventStream::next_batch`], waiting at most `timeout` for the first event.
    pub fn next_batch_timeout(
        &mut self,
        max: usize,
        timeout: Duration,
    ) -> Next<Result<Vec<Event>>> {
        let batch = self
            .rt
            .block_on(crate::rt::timeout(timeout, self.stream.next_batch(max)));
        batch_found(batch)
    }

    /// Like [`EventStream::next_raw_batch`], waiting at most `timeout` for the first event.
    pub fn next_raw_batch_timeout(
        &mut self,
        max: usize,
        timeout: Duration,
    ) -> Next<Result<Vec<RawEvent>>> {
        let batch = self
            .rt
            .block_on(crate::rt::timeout(timeout, self.stream.next_raw_batch(max)));
        batch_found(batch)
    }
}

/// The next item of `stream` within `timeout`, as [`Next`] (the streams' `next` is
/// cancel-safe: `Pending` loses nothing).
fn next_within<S: futures::Stream + Unpin>(
    rt: &tokio::runtime::Runtime,
    stream: &mut S,
    timeout: Duration,
) -> Next<S::Item> {
    match rt.block_on(crate::rt::timeout(timeout, stream.next())) {
        Some(Some(item)) => Next::Item(item),
        Some(None) => Next::End,
        None => Next::Pending,
    }
}

/// A timed batch as [`Next`]: an empty batch is the end of the follow.
fn batch_found<T>(batch: Option<Result<Vec<T>>>) -> Next<Result<Vec<T>>> {
    match batch {
        Some(Ok(events)) if events.is_empty() => Next::End,
        Some(result) => Next::Item(result),
        None => Next::Pending,
    }
}
