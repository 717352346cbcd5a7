//! `longrun._native`: the Python binding of the client core. It translates and never decides:
//! every verb is one call of `longrun::blocking::Client` (sync) or `longrun::Client` (asyncio),
//! values cross as plain Python objects, and an error crosses as the exception its
//! `ErrorKind` names in the one table of `longrun/_errors.py`.
//!
//! What it adds is only what Python needs around a wait: the GIL is released while Rust
//! waits, and a blocking wait runs in short slices with `check_signals` between them, so
//! Ctrl-C interrupts it.

mod aio;

use std::sync::{Arc, Mutex};

use futures::FutureExt;
use std::time::Duration;

use longrun::blocking::{self, Next};
use longrun::{
    CancelOutcome, ClientBuilder, ClientOptions, FollowOptions, SubmitOptions, Transport,
};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

/// How long a blocking call waits before it looks for a pending signal (Ctrl-C).
const SLICE: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------------
// Errors: one function, the table itself is `longrun._errors.KINDS`.

fn invalid(message: impl Into<String>) -> longrun::Error {
    longrun::Error::InvalidArgument {
        message: message.into(),
        status: None,
        problem: None,
    }
}

/// The Python exception for a client error: `longrun._errors.from_native` picks the class by
/// the kind's name and sets `status`, `problem` and `value`.
pub(crate) fn to_py_err(py: Python<'_>, e: longrun::Error) -> PyErr {
    static FROM_NATIVE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let build = || -> PyResult<PyErr> {
        let from_native = FROM_NATIVE.get_or_try_init(py, || {
            py.import("longrun._errors")?
                .getattr("from_native")
                .map(Bound::unbind)
        })?;
        let problem = match e.problem() {
            Some(p) => json_to_py(py, &serde_json::to_value(p).unwrap_or(Value::Null))?,
            None => py.None().into_bound(py),
        };
        let value = match e.value() {
            Some(v) => json_to_py(py, v)?,
            None => py.None().into_bound(py),
        };
        let exc = from_native.bind(py).call1((
            e.kind().as_str(),
            e.to_string(),
            e.status(),
            problem,
            value,
        ))?;
        Ok(PyErr::from_value(exc))
    };
    build().unwrap_or_else(|err| err)
}

trait OrRaise<T> {
    fn or_raise(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> OrRaise<T> for longrun::Result<T> {
    fn or_raise(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py_err(py, e))
    }
}

// ---------------------------------------------------------------------------------------------
// JSON values <-> Python objects.

/// Builds Python objects straight from a JSON reader: from an event's raw JSON text (no
/// `Value` in between, the hot path of `Event.value`) or from a `Value` (`&Value` is a serde
/// `Deserializer` too), so there is one conversion for both. Object keys keep their order.
struct PyJson<'py>(Python<'py>);

/// A Python error met while building (out of memory, say), carried through serde.
fn py_failed<E: de::Error>(e: PyErr) -> E {
    E::custom(e)
}

impl<'de, 'py> DeserializeSeed<'de> for PyJson<'py> {
    type Value = Bound<'py, PyAny>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, 'py> Visitor<'de> for PyJson<'py> {
    type Value = Bound<'py, PyAny>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(self.0.None().into_bound(self.0))
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        Ok(PyBool::new(self.0, b).to_owned().into_any())
    }
    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Self::Value, E> {
        let Ok(int) = i.into_pyobject(self.0);
        Ok(int.into_any())
    }
    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Self::Value, E> {
        let Ok(int) = u.into_pyobject(self.0);
        Ok(int.into_any())
    }
    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Self::Value, E> {
        Ok(PyFloat::new(self.0, f).into_any())
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(PyString::new(self.0, s).into_any())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let list = PyList::empty(self.0);
        while let Some(item) = seq.next_element_seed(PyJson(self.0))? {
            list.append(item).map_err(py_failed)?;
        }
        Ok(list.into_any())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let dict = PyDict::new(self.0);
        while let Some(key) = map.next_key_seed(PyKey(self.0))? {
            let value = map.next_value_seed(PyJson(self.0))?;
            dict.set_item(key, value).map_err(py_failed)?;
        }
        Ok(dict.into_any())
    }
}

/// An object key. Keys repeat from event to event (`progress`, `message`, …), so the Python
/// string of each short key is kept: a repeated key is neither decoded nor hashed again (a
/// `str` caches its hash, which every dict insert needs).
struct PyKey<'py>(Python<'py>);

/// Keys up to this long are kept, each in one of `KEY_SLOTS` slots picked by a cheap hash of
/// its length and end bytes (a new key takes its slot over). A cache of the few keys a run's
/// values repeat, not an interner: no lock, no full hash.
const KEY_LEN_KEPT: usize = 32;
const KEY_SLOTS: usize = 64;

/// A kept key: its text and its Python string.
type KeptKey = Option<(Box<str>, Py<PyString>)>;

thread_local! {
    static KEYS: std::cell::RefCell<Vec<KeptKey>> =
        std::cell::RefCell::new((0..KEY_SLOTS).map(|_| None).collect());
}

fn key_slot(key: &str) -> usize {
    let b = key.as_bytes();
    let (first, last) = (
        b.first().copied().unwrap_or(0),
        b.last().copied().unwrap_or(0),
    );
    (b.len() * 31 + usize::from(first) * 7 + usize::from(last)) % KEY_SLOTS
}

impl<'de, 'py> DeserializeSeed<'de> for PyKey<'py> {
    type Value = Bound<'py, PyAny>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'py> Visitor<'de> for PyKey<'py> {
    type Value = Bound<'py, PyAny>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        if key.len() > KEY_LEN_KEPT {
            return Ok(PyString::new(self.0, key).into_any());
        }
        let slot = key_slot(key);
        // The cell is never borrowed while Python allocates or frees: that may run a
        // collection, whose finalizers may read an event value and come back here.
        let kept = KEYS.with_borrow(|keys| match &keys[slot] {
            Some((k, string)) if **k == *key => Some(string.bind(self.0).clone()),
            _ => None,
        });
        if let Some(string) = kept {
            return Ok(string.into_any());
        }
        let string = PyString::new(self.0, key);
        let replaced =
            KEYS.with_borrow_mut(|keys| keys[slot].replace((key.into(), string.clone().unbind())));
        drop(replaced);
        Ok(string.into_any())
    }
}

fn json_to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    PyJson(py)
        .deserialize(v)
        .map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

/// An event value as Python objects, read from its JSON text.
fn raw_to_py<'py>(py: Python<'py>, raw: &RawValue) -> PyResult<Bound<'py, PyAny>> {
    let mut reader = serde_json::Deserializer::from_str(raw.get());
    PyJson(py).deserialize(&mut reader).map_err(|e| {
        to_py_err(
            py,
            longrun::Error::Protocol(format!("an event value cannot be read: {e}")),
        )
    })
}

fn py_to_json(obj: &Bound<'_, PyAny>) -> longrun::Result<Value> {
    if obj.is_none() {
        return Ok(Value::Null);
    }
    // bool before int: a Python bool is an int.
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.cast::<PyInt>().is_ok() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(i.into());
        }
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(u.into());
        }
        return Err(invalid(format!("{obj} does not fit a JSON number")));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return serde_json::Number::from_f64(f.value())
            .map(Value::Number)
            .ok_or_else(|| invalid(format!("{obj} is not a JSON number")));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::String(
            s.extract::<String>().map_err(|e| invalid(e.to_string()))?,
        ));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut map = serde_json::Map::new();
        for (k, v) in d.iter() {
            let key = k
                .cast::<PyString>()
                .map_err(|_| invalid(format!("JSON object keys are strings, not {k}")))?
                .extract::<String>()
                .map_err(|e| invalid(e.to_string()))?;
            map.insert(key, py_to_json(&v)?);
        }
        return Ok(Value::Object(map));
    }
    if let Ok(l) = obj.cast::<PyList>() {
        return l.iter().map(|v| py_to_json(&v)).collect();
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        return t.iter().map(|v| py_to_json(&v)).collect();
    }
    let type_name = obj
        .get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |n| n.to_string());
    Err(invalid(format!(
        "a value of type {type_name} cannot be sent as JSON"
    )))
}

/// A JSON value handed to Python (the result of an awaitable).
struct Json(Value);

impl<'py> IntoPyObject<'py> for Json {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;
    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        json_to_py(py, &self.0)
    }
}

fn seconds(name: &str, s: Option<f64>) -> longrun::Result<Option<Duration>> {
    s.map(|s| {
        Duration::try_from_secs_f64(s).map_err(|_| {
            invalid(format!(
                "{name} must be a non-negative number of seconds, not {s}"
            ))
        })
    })
    .transpose()
}

fn transport(name: Option<&str>) -> longrun::Result<Option<Transport>> {
    name.map(str::parse).transpose()
}

// ---------------------------------------------------------------------------------------------
// Plain data: Run, Event, Progress.

/// A handle on a run: object, id and URL (the portable resume token).
#[pyclass(frozen, module = "longrun._native")]
#[derive(Clone)]
struct Run {
    inner: longrun::Run,
}

#[pymethods]
impl Run {
    #[new]
    fn new(py: Python<'_>, base_url: &str, object: &str, id: &str) -> PyResult<Self> {
        let inner = longrun::Run::new(base_url, object, id).or_raise(py)?;
        Ok(Run { inner })
    }

    #[staticmethod]
    fn from_url(py: Python<'_>, url: &str) -> PyResult<Self> {
        let inner = longrun::Run::from_url(url).or_raise(py)?;
        Ok(Run { inner })
    }

    #[getter]
    fn object(&self) -> &str {
        self.inner.object()
    }

    #[getter]
    fn id(&self) -> String {
        self.inner.id().to_string()
    }

    #[getter]
    fn url(&self) -> &str {
        self.inner.url().as_str()
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<Run>()
            .is_ok_and(|o| o.get().inner == self.inner)
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.inner.hash(&mut h);
        h.finish()
    }

    fn __str__(&self) -> &str {
        self.inner.url().as_str()
    }

    fn __repr__(&self) -> String {
        format!(
            "Run(object={:?}, id='{}', url={:?})",
            self.inner.object(),
            self.inner.id(),
            self.inner.url().as_str()
        )
    }
}

/// The progress convention read out of a `running` event's value.
#[pyclass(frozen, get_all, module = "longrun._native")]
struct Progress {
    /// Fraction done in 0..=1, or None when the event only carries a message.
    fraction: Option<f64>,
    message: Option<String>,
}

#[pymethods]
impl Progress {
    fn __repr__(&self) -> String {
        format!(
            "Progress(fraction={}, message={})",
            self.fraction.map_or("None".into(), |f| f.to_string()),
            self.message
                .as_ref()
                .map_or("None".into(), |m| format!("{m:?}"))
        )
    }
}

/// One event of a run: its id (the cursor), state and value. The value becomes a Python object
/// when first read (then kept): draining a follow does not pay for values nobody reads.
#[pyclass(frozen, module = "longrun._native")]
struct Event {
    /// The event, its value still the JSON text it came as.
    raw: longrun::RawEvent,
    value: PyOnceLock<Py<PyAny>>,
}

impl Event {
    fn new(raw: longrun::RawEvent) -> Self {
        Event {
            raw,
            value: PyOnceLock::new(),
        }
    }
}

#[pymethods]
impl Event {
    #[getter]
    fn id(&self) -> u64 {
        self.raw.id
    }

    #[getter]
    fn state(&self) -> &'static str {
        self.raw.state.as_str()
    }

    #[getter]
    fn value<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let value = self
            .value
            .get_or_try_init(py, || raw_to_py(py, &self.raw.value).map(Bound::unbind))?;
        Ok(value.bind(py).clone())
    }

    /// True for `success`, `error` and `canceled`: nothing follows this event.
    #[getter]
    fn terminal(&self) -> bool {
        self.raw.state.is_terminal()
    }

    /// The event's progress by the core's rule (`RawEvent::progress`), or None.
    #[getter]
    fn progress(&self) -> Option<Progress> {
        self.raw.progress().map(|p| Progress {
            fraction: p.fraction,
            message: p.message,
        })
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Ok(other) = other.cast::<Event>() else {
            return Ok(false);
        };
        let other = other.get();
        Ok(other.raw.id == self.raw.id
            && other.raw.state == self.raw.state
            && other.value(py)?.eq(self.value(py)?)?)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Event(id={}, state='{}', value={})",
            self.raw.id,
            self.raw.state.as_str(),
            self.value(py)?.repr()?
        ))
    }
}

/// A batch of events, turned into Python objects once the GIL is at hand.
struct Batch(Vec<longrun::RawEvent>);

impl<'py> IntoPyObject<'py> for Batch {
    type Target = PyList;
    type Output = Bound<'py, PyList>;
    type Error = PyErr;
    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        let list = PyList::empty(py);
        for ev in self.0 {
            list.append(Event::new(ev))?;
        }
        Ok(list)
    }
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// A client builder from the keyword arguments of `longrun.Client(...)`, as they are: the core's
/// `ClientOptions` reads every option (and refuses an unknown one), so none is handled here.
fn builder(base_url: &str, options: Option<&Bound<'_, PyDict>>) -> longrun::Result<ClientBuilder> {
    let options = match options {
        Some(options) => ClientOptions::from_value(py_to_json(options.as_any())?)?,
        None => ClientOptions::default(),
    };
    options.apply(ClientBuilder::new(base_url))
}

/// Submit options from the keyword arguments of `submit`/`call`, as they are: the core's
/// `SubmitOptions` reads them (seconds for durations) and refuses an unknown one.
fn submit_options(options: Option<&Bound<'_, PyDict>>) -> longrun::Result<SubmitOptions> {
    match options {
        Some(options) => SubmitOptions::from_value(py_to_json(options.as_any())?),
        None => Ok(SubmitOptions::default()),
    }
}

/// Submit arguments: none is `{}`.
fn submit_args(args: Option<&Bound<'_, PyAny>>) -> longrun::Result<Value> {
    match args {
        Some(a) => py_to_json(a),
        None => Ok(Value::Object(Default::default())),
    }
}

/// A chunk of a byte stream, handed to Python as `bytes`.
struct Chunk(bytes::Bytes);

impl<'py> IntoPyObject<'py> for Chunk {
    type Target = PyBytes;
    type Output = Bound<'py, PyBytes>;
    type Error = PyErr;
    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        Ok(PyBytes::new(py, &self.0))
    }
}

fn cancel_outcome(outcome: CancelOutcome) -> (&'static str, Option<&'static str>) {
    match outcome {
        CancelOutcome::Accepted => ("accepted", None),
        CancelOutcome::AlreadyEnded(state) => ("ended", Some(state.as_str())),
    }
}

/// `since` is any Python `int`, read by the core's cursor rule (a negative one is
/// `InvalidArgument`, as in every SDK); `transport` a name.
fn follow_options(
    py: Python<'_>,
    since: Option<&Bound<'_, PyInt>>,
    transport_name: Option<&str>,
) -> PyResult<FollowOptions> {
    Ok(FollowOptions {
        since: offset(py, since)?,
        transport: transport(transport_name).or_raise(py)?,
    })
}

/// The blocking client (`longrun::blocking::Client`).
#[pyclass(frozen, module = "longrun._native")]
struct Client {
    inner: blocking::Client,
}

#[pymethods]
impl Client {
    /// `options`: the keyword arguments of the Python constructor (`longrun.ClientOptions`).
    #[new]
    #[pyo3(signature = (base_url, options=None))]
    fn new(py: Python<'_>, base_url: &str, options: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let b = builder(base_url, options).or_raise(py)?;
        let inner = blocking::Client::from_builder(b).or_raise(py)?;
        Ok(Client { inner })
    }

    #[getter]
    fn base_url(&self) -> &str {
        self.inner.as_async().base_url().as_str()
    }

    fn run(&self, py: Python<'_>, object: &str, id: &str) -> PyResult<Run> {
        let inner = self.inner.run(object, id).or_raise(py)?;
        Ok(Run { inner })
    }

    /// `options`: the keyword arguments of `longrun.Client.submit` (`longrun.SubmitOptions`).
    #[pyo3(signature = (object, args=None, options=None))]
    fn submit(
        &self,
        py: Python<'_>,
        object: &str,
        args: Option<&Bound<'_, PyAny>>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Run> {
        let args = submit_args(args).or_raise(py)?;
        let options = submit_options(options).or_raise(py)?;
        let inner = py
            .detach(|| self.inner.submit_with(object, args, options))
            .or_raise(py)?;
        Ok(Run { inner })
    }

    /// Submit and the run's `success` value (`longrun::Client::call`); waits in slices, as
    /// `wait` does, so Ctrl-C stops it (the run goes on).
    #[pyo3(signature = (object, args=None, options=None, timeout=None))]
    fn call<'py>(
        &self,
        py: Python<'py>,
        object: &str,
        args: Option<&Bound<'py, PyAny>>,
        options: Option<&Bound<'py, PyDict>>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let args = submit_args(args).or_raise(py)?;
        let options = submit_options(options).or_raise(py)?;
        let timeout = seconds("timeout", timeout).or_raise(py)?;
        let mut calling = self.inner.calling(object, args, options, timeout);
        loop {
            match py.detach(|| calling.next_timeout(SLICE)) {
                Next::Item(outcome) => return json_to_py(py, &outcome.or_raise(py)?),
                Next::Pending => py.check_signals()?,
                Next::End => return Err(PyRuntimeError::new_err("the call was already over")),
            }
        }
    }

    /// The run's byte stream (spec §27), chunk by chunk.
    fn stream(&self, run: &Run) -> ByteChunks {
        ByteChunks {
            inner: Mutex::new(self.inner.stream_chunks(&run.inner)),
        }
    }

    #[pyo3(signature = (run, since=None, transport=None))]
    fn follow(
        &self,
        py: Python<'_>,
        run: &Run,
        since: Option<&Bound<'_, PyInt>>,
        transport: Option<&str>,
    ) -> PyResult<Events> {
        let options = follow_options(py, since, transport)?;
        Ok(Events {
            inner: Mutex::new(self.inner.follow_with(&run.inner, options)),
        })
    }

    /// Subscribe to `topic` and return once the server holds the subscription (waiting in
    /// slices, so Ctrl-C stops it).
    #[pyo3(signature = (topic, since=None))]
    fn subscribe(
        &self,
        py: Python<'_>,
        topic: &str,
        since: Option<&Bound<'_, PyInt>>,
    ) -> PyResult<Publications> {
        let since = offset(py, since)?;
        let mut publications = self.inner.subscribe(topic, since);
        loop {
            match py.detach(|| publications.ready_timeout(SLICE)) {
                Next::Item(acked) => {
                    let acked = acked.or_raise(py)?;
                    return Ok(Publications {
                        inner: Mutex::new(publications),
                        offset: acked.offset,
                        recovered: acked.recovered,
                    });
                }
                Next::Pending | Next::End => py.check_signals()?,
            }
        }
    }

    /// Publish `data` (any JSON value) to `topic`: its offset.
    fn publish(&self, py: Python<'_>, topic: &str, data: &Bound<'_, PyAny>) -> PyResult<u64> {
        let data = py_to_json(data).or_raise(py)?;
        py.detach(|| self.inner.publish(topic, &data)).or_raise(py)
    }

    /// `("accepted", None)` or `("ended", state)`.
    fn cancel(&self, py: Python<'_>, run: &Run) -> PyResult<(&'static str, Option<&'static str>)> {
        let outcome = py.detach(|| self.inner.cancel(&run.inner)).or_raise(py)?;
        Ok(cancel_outcome(outcome))
    }

    /// `(state, last_event_id)`.
    fn status(&self, py: Python<'_>, run: &Run) -> PyResult<(&'static str, u64)> {
        let s = py.detach(|| self.inner.status(&run.inner)).or_raise(py)?;
        Ok((s.state.as_str(), s.last_event_id))
    }

    fn exists(&self, py: Python<'_>, run: &Run) -> PyResult<bool> {
        py.detach(|| self.inner.exists(&run.inner)).or_raise(py)
    }

    /// One page of `GET /_runs`; `query` a dict of `object`, `state`, `limit`, `page_token`.
    fn list_runs(&self, py: Python<'_>, query: &Bound<'_, PyAny>) -> PyResult<Page> {
        let query = list_query(query).or_raise(py)?;
        py.detach(|| self.inner.list_runs(&query))
            .or_raise(py)
            .map(Page)
    }

    fn objects(&self, py: Python<'_>) -> PyResult<Objects> {
        py.detach(|| self.inner.objects()).or_raise(py).map(Objects)
    }

    fn object(&self, py: Python<'_>, name: &str) -> PyResult<Objects> {
        let object = py.detach(|| self.inner.object(name)).or_raise(py)?;
        Ok(Objects(vec![object]))
    }

    /// The run's `success` value; waits in slices, so a signal handler's exception
    /// (KeyboardInterrupt) stops the wait (the run goes on).
    #[pyo3(signature = (run, timeout=None))]
    fn wait<'py>(
        &self,
        py: Python<'py>,
        run: &Run,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let timeout = seconds("timeout", timeout).or_raise(py)?;
        let mut waiting = self.inner.waiting(&run.inner, timeout);
        loop {
            match py.detach(|| waiting.next_timeout(SLICE)) {
                Next::Item(outcome) => return json_to_py(py, &outcome.or_raise(py)?),
                Next::Pending => py.check_signals()?,
                Next::End => return Err(PyRuntimeError::new_err("the wait was already over")),
            }
        }
    }
}

/// A blocking follow. `next_batch` waits for at least one event (in slices, checking for
/// signals) and returns every event already there, up to `max`; `[]` at the end.
#[pyclass(frozen, module = "longrun._native")]
struct Events {
    inner: Mutex<blocking::Events>,
}

#[pymethods]
impl Events {
    #[pyo3(signature = (max=1024))]
    fn next_batch(&self, py: Python<'_>, max: usize) -> PyResult<Batch> {
        // try_lock: a second thread waiting here would hold the GIL the first one needs.
        let mut guard = self.inner.try_lock().map_err(|_| {
            PyRuntimeError::new_err(
                "this follow is being read by another thread (or a call panicked)",
            )
        })?;
        let events: &mut blocking::Events = &mut guard;
        loop {
            match py.detach(|| events.next_raw_batch_timeout(max, SLICE)) {
                Next::Item(batch) => return Ok(Batch(batch.or_raise(py)?)),
                Next::End => return Ok(Batch(Vec::new())),
                Next::Pending => py.check_signals()?,
            }
        }
    }
}

/// The next item of a blocking source, waited for in slices with the GIL released, checking
/// for signals (Ctrl-C) between them; `None` at its end. `try_lock`: a second thread waiting
/// here would hold the GIL the first one needs.
fn next_in_slices<S: Send, T: Send>(
    py: Python<'_>,
    source: &Mutex<S>,
    what: &str,
    next: impl Fn(&mut S) -> Next<longrun::Result<T>> + Send + Sync,
) -> PyResult<Option<T>> {
    let mut guard = source.try_lock().map_err(|_| {
        PyRuntimeError::new_err(format!(
            "this {what} is being read by another thread (or a call panicked)"
        ))
    })?;
    let source: &mut S = &mut guard;
    loop {
        match py.detach(|| next(source)) {
            Next::Item(item) => return item.map(Some).or_raise(py),
            Next::End => return Ok(None),
            Next::Pending => py.check_signals()?,
        }
    }
}

/// A blocking byte stream: `next_chunk` waits (in slices, checking for signals) for the next
/// bytes; `None` at the end. An error is final.
#[pyclass(frozen, module = "longrun._native")]
struct ByteChunks {
    inner: Mutex<blocking::Chunks>,
}

#[pymethods]
impl ByteChunks {
    fn next_chunk(&self, py: Python<'_>) -> PyResult<Option<Chunk>> {
        let chunk = next_in_slices(py, &self.inner, "stream", |c| c.next_timeout(SLICE))?;
        Ok(chunk.map(Chunk))
    }
}

/// An asyncio byte stream: `next_chunk` is awaitable (`None` at the end); cancelling it
/// loses nothing.
#[pyclass(frozen, module = "longrun._native")]
struct AsyncByteChunks {
    inner: Arc<tokio::sync::Mutex<longrun::ByteStream>>,
}

#[pymethods]
impl AsyncByteChunks {
    fn next_chunk<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        use futures::StreamExt;
        let stream = self.inner.clone();
        aio::future_into_py(py, async move {
            let mut stream = stream.lock().await;
            stream.next().await.map(|c| c.map(Chunk)).transpose()
        })
    }
}

/// A cursor or an offset: any Python `int`, read by the core's cursor rule (a negative one
/// is `InvalidArgument`, as in every SDK).
fn offset(py: Python<'_>, since: Option<&Bound<'_, PyInt>>) -> PyResult<Option<u64>> {
    since
        .map(|n| longrun::cursor_from_decimal(&n.str()?.to_cow()?).or_raise(py))
        .transpose()
}

/// A page of `GET /_runs` as Python gets it: `([(run, state, created, ended, tenant)],
/// next_page_token)`.
struct Page(longrun::RunPage);

impl<'py> IntoPyObject<'py> for Page {
    type Target = PyTuple;
    type Output = Bound<'py, PyTuple>;
    type Error = PyErr;
    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        let runs = PyList::empty(py);
        for r in self.0.runs {
            let run = Bound::new(py, Run { inner: r.run })?;
            runs.append((run, r.state.as_str(), r.created, r.ended, r.tenant))?;
        }
        (runs, self.0.next_page_token).into_pyobject(py)
    }
}

/// The catalogue as Python gets it: `[(name, kind, description, args_schema, stream)]`.
struct Objects(Vec<longrun::ObjectInfo>);

impl<'py> IntoPyObject<'py> for Objects {
    type Target = PyList;
    type Output = Bound<'py, PyList>;
    type Error = PyErr;
    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        let list = PyList::empty(py);
        for o in self.0 {
            let schema = json_to_py(py, &o.args_schema)?;
            list.append((o.name, o.kind, o.description, schema, o.stream))?;
        }
        Ok(list)
    }
}

/// The runs-list query: the keyword arguments as a dict, read by the core's `ListRuns`.
fn list_query(query: &Bound<'_, PyAny>) -> longrun::Result<longrun::ListRuns> {
    longrun::ListRuns::from_value(py_to_json(query)?)
}

/// A publication as Python gets it: `(topic, offset, data)`.
struct Published(longrun::Publication);

impl<'py> IntoPyObject<'py> for Published {
    type Target = PyTuple;
    type Output = Bound<'py, PyTuple>;
    type Error = PyErr;
    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        let p = self.0;
        (p.topic, p.offset, json_to_py(py, &p.data)?).into_pyobject(py)
    }
}

/// A blocking subscription: `next` waits (in slices, checking for signals) for the next
/// publication. Dropping it unsubscribes.
#[pyclass(frozen, module = "longrun._native")]
struct Publications {
    inner: Mutex<blocking::Publications>,
    /// The server's ack: the topic's next offset then, and whether `since` was recovered.
    #[pyo3(get)]
    offset: u64,
    #[pyo3(get)]
    recovered: bool,
}

#[pymethods]
impl Publications {
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let p = next_in_slices(py, &self.inner, "subscription", |p| p.next_timeout(SLICE))?;
        p.map(|p| Published(p).into_pyobject(py)).transpose()
    }
}

/// An asyncio subscription: `next` is awaitable; cancelling it loses nothing.
#[pyclass(frozen, module = "longrun._native")]
struct AsyncPublications {
    inner: Arc<tokio::sync::Mutex<longrun::Subscription>>,
    #[pyo3(get)]
    offset: u64,
    #[pyo3(get)]
    recovered: bool,
}

#[pymethods]
impl AsyncPublications {
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        use futures::StreamExt;
        let subscription = self.inner.clone();
        aio::future_into_py(py, async move {
            let mut subscription = subscription.lock().await;
            subscription
                .next()
                .await
                .map(|p| p.map(Published))
                .transpose()
        })
    }
}

/// Verify a response hook's delivery (`longrun::webhook::verify_json`): `headers` a dict or
/// `(name, value)` pairs, `body` the bytes as received, `tolerance` seconds (None: the
/// core's 5 minutes). Raises `WebhookRejected`, or `InvalidArgument` for a bad secret.
#[pyfunction]
#[pyo3(signature = (secret, headers, body, tolerance=None))]
fn verify_webhook(
    py: Python<'_>,
    secret: &str,
    headers: &Bound<'_, PyAny>,
    body: &[u8],
    tolerance: Option<f64>,
) -> PyResult<()> {
    let headers = py_to_json(headers).or_raise(py)?;
    let tolerance = seconds("tolerance", tolerance).or_raise(py)?;
    longrun::webhook::verify_json(secret, &headers, body, tolerance).or_raise(py)
}

/// The asyncio client (`longrun::Client` on the runtime of `aio`).
#[pyclass(frozen, module = "longrun._native")]
struct AsyncClient {
    inner: longrun::Client,
}

#[pymethods]
impl AsyncClient {
    /// `options`: the keyword arguments of the Python constructor (`longrun.ClientOptions`).
    #[new]
    #[pyo3(signature = (base_url, options=None))]
    fn new(py: Python<'_>, base_url: &str, options: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let b = builder(base_url, options).or_raise(py)?;
        let inner = b.build().or_raise(py)?;
        Ok(AsyncClient { inner })
    }

    #[getter]
    fn base_url(&self) -> &str {
        self.inner.base_url().as_str()
    }

    fn run(&self, py: Python<'_>, object: &str, id: &str) -> PyResult<Run> {
        let inner = self.inner.run(object, id).or_raise(py)?;
        Ok(Run { inner })
    }

    #[pyo3(signature = (object, args=None, options=None))]
    fn submit<'py>(
        &self,
        py: Python<'py>,
        object: String,
        args: Option<&Bound<'py, PyAny>>,
        options: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let args = submit_args(args).or_raise(py)?;
        let options = submit_options(options).or_raise(py)?;
        let client = self.inner.clone();
        aio::future_into_py(py, async move {
            let inner = client.submit_with(&object, args, options).await?;
            Ok(Run { inner })
        })
    }

    #[pyo3(signature = (object, args=None, options=None, timeout=None))]
    fn call<'py>(
        &self,
        py: Python<'py>,
        object: String,
        args: Option<&Bound<'py, PyAny>>,
        options: Option<&Bound<'py, PyDict>>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let args = submit_args(args).or_raise(py)?;
        let options = submit_options(options).or_raise(py)?;
        let timeout = seconds("timeout", timeout).or_raise(py)?;
        let client = self.inner.clone();
        aio::future_into_py(py, async move {
            Ok(Json(client.call(&object, args, options, timeout).await?))
        })
    }

    fn stream(&self, run: &Run) -> AsyncByteChunks {
        AsyncByteChunks {
            inner: Arc::new(tokio::sync::Mutex::new(self.inner.stream(&run.inner))),
        }
    }

    #[pyo3(signature = (run, since=None, transport=None))]
    fn follow(
        &self,
        py: Python<'_>,
        run: &Run,
        since: Option<&Bound<'_, PyInt>>,
        transport: Option<&str>,
    ) -> PyResult<AsyncEvents> {
        let options = follow_options(py, since, transport)?;
        let events = self.inner.follow_with(&run.inner, options);
        // Fetched and decoded on the runtime while the loop hands out the last batch, so
        // that `try_next_batch` mostly finds the next one there.
        let events = aio::within(|| events.read_ahead())?;
        Ok(AsyncEvents {
            inner: Arc::new(tokio::sync::Mutex::new(events)),
        })
    }

    /// Awaitable: an `AsyncPublications` once the server holds the subscription.
    #[pyo3(signature = (topic, since=None))]
    fn subscribe<'py>(
        &self,
        py: Python<'py>,
        topic: &str,
        since: Option<&Bound<'py, PyInt>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let since = offset(py, since)?;
        let mut subscription = self.inner.subscribe(topic, since);
        aio::future_into_py(py, async move {
            let acked = subscription.ready().await?;
            Ok(AsyncPublications {
                inner: Arc::new(tokio::sync::Mutex::new(subscription)),
                offset: acked.offset,
                recovered: acked.recovered,
            })
        })
    }

    /// Awaitable: the publication's offset.
    fn publish<'py>(
        &self,
        py: Python<'py>,
        topic: String,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let data = py_to_json(data).or_raise(py)?;
        let client = self.inner.clone();
        aio::future_into_py(py, async move { client.publish(&topic, &data).await })
    }

    fn cancel<'py>(&self, py: Python<'py>, run: &Run) -> PyResult<Bound<'py, PyAny>> {
        let (client, run) = (self.inner.clone(), run.inner.clone());
        aio::future_into_py(
            py,
            async move { Ok(cancel_outcome(client.cancel(&run).await?)) },
        )
    }

    fn status<'py>(&self, py: Python<'py>, run: &Run) -> PyResult<Bound<'py, PyAny>> {
        let (client, run) = (self.inner.clone(), run.inner.clone());
        aio::future_into_py(py, async move {
            let s = client.status(&run).await?;
            Ok((s.state.as_str(), s.last_event_id))
        })
    }

    fn exists<'py>(&self, py: Python<'py>, run: &Run) -> PyResult<Bound<'py, PyAny>> {
        let (client, run) = (self.inner.clone(), run.inner.clone());
        aio::future_into_py(py, async move { client.exists(&run).await })
    }

    fn list_runs<'py>(
        &self,
        py: Python<'py>,
        query: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let query = list_query(query).or_raise(py)?;
        let client = self.inner.clone();
        aio::future_into_py(py, async move { Ok(Page(client.list_runs(&query).await?)) })
    }

    fn objects<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.inner.clone();
        aio::future_into_py(py, async move { Ok(Objects(client.objects().await?)) })
    }

    fn object<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        let client = self.inner.clone();
        aio::future_into_py(
            py,
            async move { Ok(Objects(vec![client.object(&name).await?])) },
        )
    }

    #[pyo3(signature = (run, timeout=None))]
    fn wait<'py>(
        &self,
        py: Python<'py>,
        run: &Run,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let timeout = seconds("timeout", timeout).or_raise(py)?;
        let (client, run) = (self.inner.clone(), run.inner.clone());
        aio::future_into_py(
            py,
            async move { Ok(Json(client.wait(&run, timeout).await?)) },
        )
    }
}

/// An asyncio follow. `next_batch` is awaitable; cancelling it loses nothing (the stream's
/// `next_batch` is cancel-safe), and dropping this object ends the follow.
#[pyclass(frozen, module = "longrun._native")]
struct AsyncEvents {
    inner: Arc<tokio::sync::Mutex<longrun::EventStream>>,
}

#[pymethods]
impl AsyncEvents {
    /// The next events if they are already here (read ahead), `None` if they are not yet: then
    /// await `next_batch`. No future, no thread and no GIL hand-over when they are here, which
    /// is most of the time in a drain.
    #[pyo3(signature = (max=1024))]
    fn try_next_batch(&self, py: Python<'_>, max: usize) -> PyResult<Option<Batch>> {
        let Ok(mut events) = self.inner.try_lock() else {
            return Ok(None); // a `next_batch` is in progress
        };
        // Polled once: `next_raw_batch` is cancel-safe, so dropping it unfinished loses nothing.
        match events.next_raw_batch(max).now_or_never() {
            Some(batch) => batch.map(|b| Some(Batch(b))).or_raise(py),
            None => Ok(None),
        }
    }

    #[pyo3(signature = (max=1024))]
    fn next_batch<'py>(&self, py: Python<'py>, max: usize) -> PyResult<Bound<'py, PyAny>> {
        let events = self.inner.clone();
        aio::future_into_py(py, async move {
            let mut events = events.lock().await;
            Ok(RawBatch(Mutex::new(events.next_raw_batch(max).await?)))
        })
    }
}

/// The events an asyncio `next_batch` got, not yet Python objects: the runtime thread that
/// completes the future hands over this one object, and the events are made by `take` on the
/// event loop's thread, instead of the two threads taking turns with the GIL per batch.
#[pyclass(frozen, module = "longrun._native")]
struct RawBatch(Mutex<Vec<longrun::RawEvent>>);

#[pymethods]
impl RawBatch {
    /// The events, once: a second call gets an empty list.
    fn take(&self) -> Batch {
        Batch(std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ))
    }
}

/// The names of `longrun::ErrorKind`, for the test that `longrun._errors` maps every one.
#[pyfunction]
fn error_kinds() -> Vec<&'static str> {
    longrun::ErrorKind::ALL.iter().map(|k| k.as_str()).collect()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Run>()?;
    m.add_class::<Event>()?;
    m.add_class::<Progress>()?;
    m.add_class::<Client>()?;
    m.add_class::<Events>()?;
    m.add_class::<AsyncClient>()?;
    m.add_class::<AsyncEvents>()?;
    m.add_class::<RawBatch>()?;
    m.add_class::<ByteChunks>()?;
    m.add_class::<AsyncByteChunks>()?;
    m.add_class::<Publications>()?;
    m.add_class::<AsyncPublications>()?;
    m.add_function(wrap_pyfunction!(error_kinds, m)?)?;
    m.add_function(wrap_pyfunction!(verify_webhook, m)?)?;
    // Before the interpreter finalizes, the asyncio runtime stops (see `aio`).
    m.py()
        .import("atexit")?
        .call_method1("register", (wrap_pyfunction!(aio::shutdown, m)?,))?;
    Ok(())
}
