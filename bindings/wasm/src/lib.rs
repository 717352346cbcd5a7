//! The browser half of the `longrun` npm package: `longrun::Client` behind wasm-bindgen, HTTP
//! through reqwest's fetch backend. It translates and never decides: values cross as JSON text
//! (`shared.rs`, the same as the napi addon), errors as JSON in the message of a rejected
//! promise, and `js/src/core.js` turns both into the public API.

#[path = "../../shared.rs"]
mod shared;

use std::rc::Rc;

use js_sys::{Function, Promise};
use longrun::{EventStream, Interrupt, Run};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

fn fail(e: &longrun::Error) -> JsValue {
    js_sys::Error::new(&shared::error_json(e)).into()
}

fn run(url: &str) -> Result<Run, JsValue> {
    Run::from_url(url).map_err(|e| fail(&e))
}

/// `f`, unless `abort` is raised first (the JS side raises it for an `AbortSignal`).
async fn unless_aborted<T>(
    abort: &Interrupt,
    f: impl Future<Output = longrun::Result<T>>,
) -> Result<T, JsValue> {
    match abort.run(f).await {
        Some(out) => out.map_err(|e| fail(&e)),
        None => Err(js_sys::Error::new(shared::ABORTED).into()),
    }
}

/// The run at `url` (`Run::from_url`), as run JSON.
#[wasm_bindgen(js_name = runFromUrl)]
pub fn run_from_url(url: &str) -> Result<String, JsValue> {
    Ok(shared::run_json(&run(url)?))
}

/// The core's error kind names, as a JSON array.
#[wasm_bindgen(js_name = errorKinds)]
pub fn error_kinds() -> String {
    shared::error_kinds_json()
}

#[wasm_bindgen]
pub struct NativeClient {
    inner: longrun::Client,
}

#[wasm_bindgen]
impl NativeClient {
    #[wasm_bindgen(constructor)]
    pub fn new(url: &str, options: &str) -> Result<NativeClient, JsValue> {
        let inner = shared::client(url, options).map_err(|e| fail(&e))?;
        Ok(NativeClient { inner })
    }

    #[wasm_bindgen(js_name = baseUrl)]
    pub fn base_url(&self) -> String {
        self.inner.base_url().to_string()
    }

    pub fn run(&self, object: &str, id: &str) -> Result<String, JsValue> {
        let run = self.inner.run(object, id).map_err(|e| fail(&e))?;
        Ok(shared::run_json(&run))
    }

    /// `options`: the JSON of the JS `SubmitOptions`.
    pub fn submit(&self, object: String, args: Option<String>, options: Option<String>) -> Promise {
        let client = self.inner.clone();
        future_to_promise(async move {
            let args = shared::args(args.as_deref()).map_err(|e| fail(&e))?;
            let options = shared::submit_options(options.as_deref()).map_err(|e| fail(&e))?;
            let run = client
                .submit_with(&object, args, options)
                .await
                .map_err(|e| fail(&e))?;
            Ok(shared::run_json(&run).into())
        })
    }

    /// A call (submit, then the outcome) for `NativeCall.call` to start: `Client::call`.
    pub fn caller(
        &self,
        object: String,
        args: Option<String>,
        options: Option<String>,
        timeout_ms: Option<f64>,
    ) -> Result<NativeCall, JsValue> {
        Ok(NativeCall {
            client: self.inner.clone(),
            object,
            args: shared::args(args.as_deref()).map_err(|e| fail(&e))?,
            options: shared::submit_options(options.as_deref()).map_err(|e| fail(&e))?,
            timeout: shared::timeout(timeout_ms).map_err(|e| fail(&e))?,
            abort: Interrupt::new(),
        })
    }

    pub fn status(&self, run_url: String) -> Promise {
        let client = self.inner.clone();
        future_to_promise(async move {
            let s = client.status(&run(&run_url)?).await.map_err(|e| fail(&e))?;
            Ok(shared::status_json(&s).into())
        })
    }

    /// One page of `GET /_runs`: `options` the JSON of `{object, state, limit, pageToken}`.
    #[wasm_bindgen(js_name = listRuns)]
    pub fn list_runs(&self, options: String) -> Promise {
        let client = self.inner.clone();
        future_to_promise(async move {
            let query = longrun::ListRuns::from_json(&options).map_err(|e| fail(&e))?;
            let page = client.list_runs(&query).await.map_err(|e| fail(&e))?;
            Ok(shared::run_page_json(&page).into())
        })
    }

    /// The object catalogue, as a JSON array.
    pub fn objects(&self) -> Promise {
        let client = self.inner.clone();
        future_to_promise(async move {
            let objects = client.objects().await.map_err(|e| fail(&e))?;
            let json = serde_json::Value::from_iter(objects.iter().map(shared::object_value));
            Ok(json.to_string().into())
        })
    }

    /// One object of the catalogue, as JSON.
    pub fn object(&self, name: String) -> Promise {
        let client = self.inner.clone();
        future_to_promise(async move {
            let object = client.object(&name).await.map_err(|e| fail(&e))?;
            Ok(shared::object_value(&object).to_string().into())
        })
    }

    pub fn exists(&self, run_url: String) -> Promise {
        let client = self.inner.clone();
        future_to_promise(async move {
            let e = client.exists(&run(&run_url)?).await.map_err(|e| fail(&e))?;
            Ok(e.into())
        })
    }

    pub fn cancel(&self, run_url: String) -> Promise {
        let client = self.inner.clone();
        future_to_promise(async move {
            let o = client.cancel(&run(&run_url)?).await.map_err(|e| fail(&e))?;
            Ok(shared::cancel_json(&o).into())
        })
    }

    pub fn follow(
        &self,
        run_url: &str,
        since: Option<f64>,
        transport: Option<String>,
        progress: Option<bool>,
    ) -> Result<NativeFollow, JsValue> {
        let options = shared::follow_options(since, transport.as_deref()).map_err(|e| fail(&e))?;
        let stream = self.inner.follow_with(&run(run_url)?, options);
        Ok(NativeFollow {
            stream: Rc::new(futures::lock::Mutex::new(Some(stream))),
            abort: Interrupt::new(),
            progress: progress.unwrap_or(false),
        })
    }

    /// A subscription to `topic` (from offset `since`) over the client's WebSocket; `ready`
    /// resolves once the server holds it, `next` gives its publications.
    pub fn subscribe(
        &self,
        topic: &str,
        since: Option<f64>,
    ) -> Result<NativeSubscription, JsValue> {
        let since = since
            .map(longrun::cursor_from_f64)
            .transpose()
            .map_err(|e| fail(&e))?;
        Ok(NativeSubscription {
            subscription: Rc::new(futures::lock::Mutex::new(Some(
                self.inner.subscribe(topic, since),
            ))),
            abort: Interrupt::new(),
        })
    }

    /// Publish `data` (JSON text) to `topic`: its offset.
    pub fn publish(&self, topic: String, data: String) -> Promise {
        let client = self.inner.clone();
        future_to_promise(async move {
            let data = shared::json_value(&data, "the data").map_err(|e| fail(&e))?;
            let offset = client.publish(&topic, &data).await.map_err(|e| fail(&e))?;
            // Offsets count publications: far below 2^53, exact as a JS number.
            Ok(JsValue::from(offset as f64))
        })
    }

    pub fn waiter(&self, run_url: &str, timeout_ms: Option<f64>) -> Result<NativeWait, JsValue> {
        Ok(NativeWait {
            client: self.inner.clone(),
            run: run(run_url)?,
            timeout: shared::timeout(timeout_ms).map_err(|e| fail(&e))?,
            abort: Interrupt::new(),
        })
    }
}

#[wasm_bindgen]
pub struct NativeFollow {
    stream: Rc<futures::lock::Mutex<Option<EventStream>>>,
    abort: Interrupt,
    /// Add each event's progress (the JS side has an `onProgress`).
    progress: bool,
}

#[wasm_bindgen]
impl NativeFollow {
    #[wasm_bindgen(js_name = nextBatch)]
    pub fn next_batch(&self, max: u32) -> Promise {
        let (stream, abort, progress) = (self.stream.clone(), self.abort.clone(), self.progress);
        future_to_promise(async move {
            let mut guard = stream.lock().await;
            let Some(events) = guard.as_mut() else {
                return Ok(shared::batch_json(&[], false).into());
            };
            let batch = unless_aborted(&abort, events.next_raw_batch(max as usize)).await;
            Ok(shared::hand_over(&mut guard, batch, progress)?.into())
        })
    }

    pub fn close(&self) {
        self.abort.raise();
        if let Some(mut guard) = self.stream.try_lock() {
            *guard = None;
        }
    }
}

/// A subscription (`Client::subscribe`); dropping or closing it unsubscribes.
#[wasm_bindgen]
pub struct NativeSubscription {
    subscription: Rc<futures::lock::Mutex<Option<longrun::Subscription>>>,
    abort: Interrupt,
}

#[wasm_bindgen]
impl NativeSubscription {
    /// The server's ack, as JSON `{"offset", "recovered"}` (`Subscription::ready`).
    pub fn ready(&self) -> Promise {
        let (subscription, abort) = (self.subscription.clone(), self.abort.clone());
        future_to_promise(async move {
            let mut guard = subscription.lock().await;
            let Some(s) = guard.as_mut() else {
                return Err(js_sys::Error::new(shared::ABORTED).into());
            };
            let acked = unless_aborted(&abort, s.ready()).await;
            if acked.is_err() {
                *guard = None;
            }
            Ok(shared::subscribed_json(acked?).into())
        })
    }

    /// The next publication as JSON `{"topic", "offset", "data"}`, or `null` once closed.
    pub fn next(&self) -> Promise {
        use futures::StreamExt;
        let (subscription, abort) = (self.subscription.clone(), self.abort.clone());
        future_to_promise(async move {
            let mut guard = subscription.lock().await;
            let Some(s) = guard.as_mut() else {
                return Ok(JsValue::NULL);
            };
            let next = unless_aborted(&abort, async { s.next().await.transpose() }).await;
            if !matches!(next, Ok(Some(_))) {
                *guard = None; // over or failed: unsubscribe now
            }
            Ok(next?.map_or(JsValue::NULL, |p| shared::publication_json(&p).into()))
        })
    }

    /// Unsubscribe now: a pending `ready` or `next` rejects with `Aborted`.
    pub fn close(&self) {
        self.abort.raise();
        if let Some(mut guard) = self.subscription.try_lock() {
            *guard = None;
        }
    }
}

/// Verify a response hook's delivery (`longrun::webhook::verify_json`): pure computation, so
/// the browser build has it too.
#[wasm_bindgen(js_name = verifyWebhook)]
pub fn verify_webhook(
    secret: &str,
    headers: &str,
    body: &[u8],
    tolerance_ms: Option<f64>,
) -> Result<(), JsValue> {
    shared::verify_webhook(secret, headers, body, tolerance_ms).map_err(|e| fail(&e))
}

#[wasm_bindgen]
pub struct NativeCall {
    client: longrun::Client,
    object: String,
    args: serde_json::Value,
    options: longrun::SubmitOptions,
    timeout: Option<std::time::Duration>,
    abort: Interrupt,
}

#[wasm_bindgen]
impl NativeCall {
    pub fn call(&self) -> Promise {
        let (client, abort, object) =
            (self.client.clone(), self.abort.clone(), self.object.clone());
        let (args, options, timeout) = (self.args.clone(), self.options.clone(), self.timeout);
        future_to_promise(async move {
            let value =
                unless_aborted(&abort, client.call(&object, args, options, timeout)).await?;
            Ok(value.to_string().into())
        })
    }

    pub fn abort(&self) {
        self.abort.raise();
    }
}

#[wasm_bindgen]
pub struct NativeWait {
    client: longrun::Client,
    run: Run,
    timeout: Option<std::time::Duration>,
    abort: Interrupt,
}

#[wasm_bindgen]
impl NativeWait {
    pub fn wait(&self, on_progress: Option<Function>) -> Promise {
        let (client, run, abort, timeout) = (
            self.client.clone(),
            self.run.clone(),
            self.abort.clone(),
            self.timeout,
        );
        future_to_promise(async move {
            let on_event = move |ev: &longrun::RawEvent| {
                if let (Some(f), Some(p)) = (&on_progress, ev.progress()) {
                    let json = JsValue::from(shared::progress_json(p));
                    let _ = f.call1(&JsValue::NULL, &json);
                }
            };
            let value = unless_aborted(&abort, client.wait_with(&run, timeout, on_event)).await?;
            Ok(value.to_string().into())
        })
    }

    pub fn abort(&self) {
        self.abort.raise();
    }
}
