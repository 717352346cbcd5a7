//! The Node.js half of the `longrun` npm package: `longrun::Client` behind napi-rs, async
//! calls on napi's tokio runtime. It translates and never decides: values cross as JSON text
//! (`shared.rs`), errors as JSON in the message of a rejected promise, and `js/src/core.js`
//! turns both into the public API.

// napi-derive's generated glue is `unsafe` (it is the FFI edge); our own code has none.
#![allow(unsafe_code)]

#[path = "../../shared.rs"]
mod shared;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::FutureExt;
use longrun::{EventStream, Interrupt, Run};
use napi::Status;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;

type Result<T> = napi::Result<T>;

// A follow allocates per event (each value's JSON text) and frees on another thread than the
// runtime's reader; mimalloc makes both cheap.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn fail(e: &longrun::Error) -> napi::Error {
    napi::Error::new(Status::GenericFailure, shared::error_json(e))
}

fn aborted() -> napi::Error {
    napi::Error::new(Status::GenericFailure, shared::ABORTED.to_owned())
}

fn run(url: &str) -> Result<Run> {
    Run::from_url(url).map_err(|e| fail(&e))
}

/// `f`, unless `abort` is raised first (the JS side raises it for an `AbortSignal`).
async fn unless_aborted<T>(
    abort: &Interrupt,
    f: impl Future<Output = longrun::Result<T>>,
) -> Result<T> {
    match abort.run(f).await {
        Some(out) => out.map_err(|e| fail(&e)),
        None => Err(aborted()),
    }
}

/// The run at `url` (`Run::from_url`), as run JSON.
#[napi]
pub fn run_from_url(url: String) -> Result<String> {
    Ok(shared::run_json(&run(&url)?))
}

/// The core's error kind names, as a JSON array.
#[napi]
pub fn error_kinds() -> String {
    shared::error_kinds_json()
}

#[napi]
pub struct NativeClient {
    inner: longrun::Client,
}

#[napi]
impl NativeClient {
    /// `options`: the JSON of the JS constructor's options.
    #[napi(constructor)]
    pub fn new(url: String, options: String) -> Result<Self> {
        let inner = shared::client(&url, &options).map_err(|e| fail(&e))?;
        Ok(NativeClient { inner })
    }

    #[napi]
    pub fn base_url(&self) -> String {
        self.inner.base_url().to_string()
    }

    /// The run `object`/`id` of this client's server, as run JSON.
    #[napi]
    pub fn run(&self, object: String, id: String) -> Result<String> {
        let run = self.inner.run(&object, &id).map_err(|e| fail(&e))?;
        Ok(shared::run_json(&run))
    }

    /// `options`: the JSON of the JS `SubmitOptions`.
    #[napi]
    pub async fn submit(
        &self,
        object: String,
        args: Option<String>,
        options: Option<String>,
    ) -> Result<String> {
        let args = shared::args(args.as_deref()).map_err(|e| fail(&e))?;
        let options = shared::submit_options(options.as_deref()).map_err(|e| fail(&e))?;
        let run = self
            .inner
            .submit_with(&object, args, options)
            .await
            .map_err(|e| fail(&e))?;
        Ok(shared::run_json(&run))
    }

    /// A call (submit, then the outcome) for `NativeWait.wait` to start: `Client::call`.
    #[napi]
    pub fn caller(
        &self,
        object: String,
        args: Option<String>,
        options: Option<String>,
        timeout_ms: Option<f64>,
    ) -> Result<NativeCall> {
        Ok(NativeCall {
            client: self.inner.clone(),
            object,
            args: shared::args(args.as_deref()).map_err(|e| fail(&e))?,
            options: shared::submit_options(options.as_deref()).map_err(|e| fail(&e))?,
            timeout: shared::timeout(timeout_ms).map_err(|e| fail(&e))?,
            abort: Interrupt::new(),
        })
    }

    /// The run's byte stream; read it with `nextChunk`.
    #[napi]
    pub fn stream(&self, run_url: String) -> Result<NativeStream> {
        Ok(NativeStream {
            stream: Arc::new(futures::lock::Mutex::new(Some(
                self.inner.stream(&run(&run_url)?),
            ))),
            abort: Interrupt::new(),
        })
    }

    #[napi]
    pub async fn status(&self, run_url: String) -> Result<String> {
        let s = self
            .inner
            .status(&run(&run_url)?)
            .await
            .map_err(|e| fail(&e))?;
        Ok(shared::status_json(&s))
    }

    /// One page of `GET /_runs`: `options` the JSON of `{object, state, limit, pageToken}`.
    #[napi]
    pub async fn list_runs(&self, options: String) -> Result<String> {
        let query = longrun::ListRuns::from_json(&options).map_err(|e| fail(&e))?;
        let page = self.inner.list_runs(&query).await.map_err(|e| fail(&e))?;
        Ok(shared::run_page_json(&page))
    }

    /// The object catalogue, as a JSON array.
    #[napi]
    pub async fn objects(&self) -> Result<String> {
        let objects = self.inner.objects().await.map_err(|e| fail(&e))?;
        Ok(serde_json::Value::from_iter(objects.iter().map(shared::object_value)).to_string())
    }

    /// One object of the catalogue, as JSON.
    #[napi]
    pub async fn object(&self, name: String) -> Result<String> {
        let object = self.inner.object(&name).await.map_err(|e| fail(&e))?;
        Ok(shared::object_value(&object).to_string())
    }

    #[napi]
    pub async fn exists(&self, run_url: String) -> Result<bool> {
        self.inner
            .exists(&run(&run_url)?)
            .await
            .map_err(|e| fail(&e))
    }

    #[napi]
    pub async fn cancel(&self, run_url: String) -> Result<String> {
        let o = self
            .inner
            .cancel(&run(&run_url)?)
            .await
            .map_err(|e| fail(&e))?;
        Ok(shared::cancel_json(&o))
    }

    /// A follow from after `since` (none: from event 0); read it with `nextBatch`.
    #[napi]
    pub fn follow(
        &self,
        run_url: String,
        since: Option<f64>,
        transport: Option<String>,
        progress: Option<bool>,
    ) -> Result<NativeFollow> {
        let options = shared::follow_options(since, transport.as_deref()).map_err(|e| fail(&e))?;
        let stream = self.inner.follow_with(&run(&run_url)?, options);
        Ok(NativeFollow {
            stream: Arc::new(futures::lock::Mutex::new(Some(stream))),
            abort: Interrupt::new(),
            progress: progress.unwrap_or(false),
            reading_ahead: Default::default(),
        })
    }

    /// A subscription to `topic` (from offset `since`); `ready` resolves once the server
    /// holds it, `next` gives its publications.
    #[napi]
    pub fn subscribe(&self, topic: String, since: Option<f64>) -> Result<NativeSubscription> {
        let since = since
            .map(longrun::cursor_from_f64)
            .transpose()
            .map_err(|e| fail(&e))?;
        Ok(NativeSubscription {
            subscription: Arc::new(futures::lock::Mutex::new(Some(
                self.inner.subscribe(&topic, since),
            ))),
            abort: Interrupt::new(),
        })
    }

    /// Publish `data` (JSON text) to `topic`: its offset.
    #[napi]
    pub async fn publish(&self, topic: String, data: String) -> Result<f64> {
        let data = shared::json_value(&data, "the data").map_err(|e| fail(&e))?;
        let offset = self
            .inner
            .publish(&topic, &data)
            .await
            .map_err(|e| fail(&e))?;
        // Offsets count publications: far below 2^53, exact as a JS number.
        Ok(offset as f64)
    }

    /// A wait for the run's outcome; start it with `NativeWait.wait`.
    #[napi]
    pub fn waiter(&self, run_url: String, timeout_ms: Option<f64>) -> Result<NativeWait> {
        Ok(NativeWait {
            client: self.inner.clone(),
            run: run(&run_url)?,
            timeout: shared::timeout(timeout_ms).map_err(|e| fail(&e))?,
            abort: Interrupt::new(),
        })
    }
}

#[napi]
pub struct NativeFollow {
    stream: Arc<futures::lock::Mutex<Option<EventStream>>>,
    abort: Interrupt,
    /// Add each event's progress (the JS side has an `onProgress`).
    progress: bool,
    /// `stream` is the read-ahead of the follow (from the first `next_batch` on).
    reading_ahead: AtomicBool,
}

#[napi]
impl NativeFollow {
    /// The next events (`shared::batch_json`, at most `max`), waiting for at least one; none
    /// at the end.
    #[napi]
    pub async fn next_batch(&self, max: u32) -> Result<String> {
        let (stream, abort, progress) = (self.stream.clone(), self.abort.clone(), self.progress);
        let mut guard = stream.lock().await;
        // The reader starts with the first call, on napi's runtime (which `follow`, called on
        // the JS thread, is not on), and then fetches while JS parses and hands out a batch:
        // the JS thread is the bottleneck of a drain, so it should never wait for the network.
        if !self.reading_ahead.swap(true, Ordering::Relaxed) {
            *guard = guard.take().map(EventStream::read_ahead);
        }
        let Some(events) = guard.as_mut() else {
            return Ok(shared::batch_json(&[], false));
        };
        let batch = unless_aborted(&abort, events.next_raw_batch(max as usize)).await;
        shared::hand_over(&mut guard, batch, progress)
    }

    /// The next events if the read-ahead already has them, else `null` (then await
    /// `nextBatch`): no promise and no turn of the event loop for a batch that is there, which
    /// is most batches of a drain.
    #[napi]
    pub fn try_next_batch(&self, max: u32) -> Result<Option<String>> {
        if !self.reading_ahead.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let Some(mut guard) = self.stream.try_lock() else {
            return Ok(None); // a `nextBatch` is in progress
        };
        let Some(events) = guard.as_mut() else {
            return Ok(Some(shared::batch_json(&[], false)));
        };
        // Polled once: `next_raw_batch` is cancel-safe, so dropping it unfinished loses nothing.
        let Some(batch) = events.next_raw_batch(max as usize).now_or_never() else {
            return Ok(None);
        };
        let batch = batch.map_err(|e| fail(&e));
        shared::hand_over(&mut guard, batch, self.progress).map(Some)
    }

    /// Stop the follow now: a pending `nextBatch` rejects with `Aborted`, the connection closes.
    #[napi]
    pub fn close(&self) {
        self.abort.raise();
        if let Some(mut guard) = self.stream.try_lock() {
            *guard = None;
        }
    }
}

/// A call in progress (`Client::call`); `abort` stops it (the run goes on).
#[napi]
pub struct NativeCall {
    client: longrun::Client,
    object: String,
    args: serde_json::Value,
    options: longrun::SubmitOptions,
    timeout: Option<std::time::Duration>,
    abort: Interrupt,
}

#[napi]
impl NativeCall {
    /// The run's success value (JSON).
    #[napi]
    pub async fn call(&self) -> Result<String> {
        let (client, abort) = (self.client.clone(), self.abort.clone());
        let (args, options) = (self.args.clone(), self.options.clone());
        let call = client.call(&self.object, args, options, self.timeout);
        Ok(unless_aborted(&abort, call).await?.to_string())
    }

    #[napi]
    pub fn abort(&self) {
        self.abort.raise();
    }
}

/// A run's byte stream (`Client::stream`).
#[napi]
pub struct NativeStream {
    stream: Arc<futures::lock::Mutex<Option<longrun::ByteStream>>>,
    abort: Interrupt,
}

#[napi]
impl NativeStream {
    /// The next bytes, or `null` once every byte was read and the run has ended.
    #[napi]
    pub async fn next_chunk(&self) -> Result<Option<napi::bindgen_prelude::Buffer>> {
        use futures::StreamExt;
        let (stream, abort) = (self.stream.clone(), self.abort.clone());
        let mut guard = stream.lock().await;
        let Some(bytes) = guard.as_mut() else {
            return Ok(None);
        };
        let next = unless_aborted(&abort, async { bytes.next().await.transpose() }).await;
        if !matches!(next, Ok(Some(_))) {
            *guard = None; // over or failed: close the connection now
        }
        Ok(next?.map(|chunk| chunk.to_vec().into()))
    }

    /// Stop reading now: a pending `nextChunk` rejects with `Aborted`, the connection closes.
    #[napi]
    pub fn close(&self) {
        self.abort.raise();
        if let Some(mut guard) = self.stream.try_lock() {
            *guard = None;
        }
    }
}

/// A subscription (`Client::subscribe`); dropping or closing it unsubscribes.
#[napi]
pub struct NativeSubscription {
    subscription: Arc<futures::lock::Mutex<Option<longrun::Subscription>>>,
    abort: Interrupt,
}

#[napi]
impl NativeSubscription {
    /// The server's ack, as JSON `{"offset", "recovered"}` (`Subscription::ready`).
    #[napi]
    pub async fn ready(&self) -> Result<String> {
        let (subscription, abort) = (self.subscription.clone(), self.abort.clone());
        let mut guard = subscription.lock().await;
        let Some(s) = guard.as_mut() else {
            return Err(aborted());
        };
        let acked = unless_aborted(&abort, s.ready()).await;
        if acked.is_err() {
            *guard = None;
        }
        Ok(shared::subscribed_json(acked?))
    }

    /// The next publication as JSON `{"topic", "offset", "data"}`, or `null` once closed.
    #[napi]
    pub async fn next(&self) -> Result<Option<String>> {
        use futures::StreamExt;
        let (subscription, abort) = (self.subscription.clone(), self.abort.clone());
        let mut guard = subscription.lock().await;
        let Some(s) = guard.as_mut() else {
            return Ok(None);
        };
        let next = unless_aborted(&abort, async { s.next().await.transpose() }).await;
        if !matches!(next, Ok(Some(_))) {
            *guard = None; // over or failed: unsubscribe now
        }
        Ok(next?.map(|p| shared::publication_json(&p)))
    }

    /// Unsubscribe now: a pending `ready` or `next` rejects with `Aborted`.
    #[napi]
    pub fn close(&self) {
        self.abort.raise();
        if let Some(mut guard) = self.subscription.try_lock() {
            *guard = None;
        }
    }
}

/// Verify a response hook's delivery (`longrun::webhook::verify_json`); throws
/// `WebhookRejected` or `InvalidArgument` as error JSON.
#[napi]
pub fn verify_webhook(
    secret: String,
    headers: String,
    body: napi::bindgen_prelude::Uint8Array,
    tolerance_ms: Option<f64>,
) -> Result<()> {
    shared::verify_webhook(&secret, &headers, &body, tolerance_ms).map_err(|e| fail(&e))
}

/// A wait's progress callback: at most this many calls queued for the JS thread.
type OnProgress = ThreadsafeFunction<String, (), String, Status, false, false, 64>;

#[napi]
pub struct NativeWait {
    client: longrun::Client,
    run: Run,
    timeout: Option<std::time::Duration>,
    abort: Interrupt,
}

#[napi]
impl NativeWait {
    /// The run's success value (JSON); `on_progress` gets the progress JSON of each event that
    /// has some.
    #[napi]
    pub async fn wait(&self, on_progress: Option<OnProgress>) -> Result<String> {
        let (client, run, abort) = (self.client.clone(), self.run.clone(), self.abort.clone());
        let on_event = move |ev: &longrun::RawEvent| {
            if let (Some(f), Some(p)) = (&on_progress, ev.progress()) {
                let json = shared::progress_json(p);
                // The queue to the JS thread is bounded: when JS falls behind, the wait waits
                // for it (off the runtime's worker), so progress is neither lost nor piled up.
                if f.call(json.clone(), ThreadsafeFunctionCallMode::NonBlocking)
                    == Status::QueueFull
                {
                    tokio::task::block_in_place(|| {
                        f.call(json, ThreadsafeFunctionCallMode::Blocking)
                    });
                }
            }
        };
        let value = unless_aborted(&abort, client.wait_with(&run, self.timeout, on_event)).await?;
        Ok(value.to_string())
    }

    #[napi]
    pub fn abort(&self) {
        self.abort.raise();
    }
}
