//! Rust futures as asyncio futures, on a tokio runtime this module owns and stops at exit.
//!
//! Not pyo3-async-runtimes: its runtime is `'static` and never stops, so a thread of it that
//! completes a future while the interpreter finalizes takes the GIL then, which aborts the
//! process (`Fatal Python error: PyGILState_Release`, PyO3/pyo3-async-runtimes#40; here about
//! one exit in five with requests in flight). Instead an `atexit` hook, which runs before
//! finalization, stops this runtime: pending futures are dropped unanswered, an answer already
//! under way is delivered (the hook lets go of the GIL while it waits), and no thread of ours
//! is left to call into Python afterwards.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use pyo3::IntoPyObjectExt;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use tokio::runtime::{Handle, Runtime};
use tokio::task::AbortHandle;

enum State {
    /// No asyncio call yet: no threads.
    Idle,
    Running(Runtime),
    /// The interpreter is exiting: nothing may start or answer any more.
    Stopped,
}

static RUNTIME: Mutex<State> = Mutex::new(State::Idle);

fn runtime() -> PyResult<Handle> {
    let mut state = RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
    match &*state {
        State::Running(rt) => Ok(rt.handle().clone()),
        State::Stopped => Err(PyRuntimeError::new_err(
            "longrun: the interpreter is exiting",
        )),
        State::Idle => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("longrun-asyncio")
                .build()
                .map_err(|e| PyRuntimeError::new_err(format!("longrun: no runtime: {e}")))?;
            let handle = rt.handle().clone();
            *state = State::Running(rt);
            Ok(handle)
        }
    }
}

fn stopped() -> bool {
    matches!(
        *RUNTIME.lock().unwrap_or_else(PoisonError::into_inner),
        State::Stopped
    )
}

/// `f` within the runtime (for what spawns on the current one, as `EventStream::read_ahead`).
pub fn within<R>(f: impl FnOnce() -> R) -> PyResult<R> {
    let handle = runtime()?;
    let _entered = handle.enter();
    Ok(f())
}

/// The `atexit` hook (the module registers it): stop the runtime before finalization.
#[pyfunction]
pub fn shutdown(py: Python<'_>) {
    let state = std::mem::replace(
        &mut *RUNTIME.lock().unwrap_or_else(PoisonError::into_inner),
        State::Stopped,
    );
    if let State::Running(rt) = state {
        // Without the GIL: an answer under way needs it to finish. Bounded, so that exit
        // cannot hang on a stuck thread.
        py.detach(|| rt.shutdown_timeout(Duration::from_secs(5)));
    }
}

/// An asyncio future of the running loop, answered with what `fut` gives (a
/// `longrun::Error` raised as its exception class). Cancelling it drops `fut`.
pub fn future_into_py<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = longrun::Result<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    static ASYNCIO: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let asyncio = ASYNCIO.get_or_try_init(py, || py.import("asyncio").map(Bound::unbind))?;
    let event_loop = asyncio.bind(py).call_method0("get_running_loop")?;
    let future = event_loop.call_method0("create_future")?;
    let answer = (event_loop.unbind(), future.clone().unbind());
    let task = runtime()?.spawn(async move {
        let out = AssertUnwindSafe(fut).catch_unwind().await;
        // Waiting for the GIL on a blocking thread keeps the workers going meanwhile.
        tokio::task::spawn_blocking(move || deliver(answer, out));
    });
    future.call_method1("add_done_callback", (AbortOnCancel(task.abort_handle()),))?;
    Ok(future)
}

type Outcome<T> = std::thread::Result<longrun::Result<T>>;

fn deliver<T>((event_loop, future): (Py<PyAny>, Py<PyAny>), out: Outcome<T>)
where
    T: for<'a> IntoPyObject<'a>,
{
    if stopped() {
        return;
    }
    Python::attach(|py| {
        let answer = match out {
            Ok(Ok(value)) => value.into_py_any(py).map(|v| (true, v)),
            Ok(Err(e)) => Err(crate::to_py_err(py, e)),
            Err(panic) => Err(PyRuntimeError::new_err(format!(
                "longrun panicked (a bug): {}",
                panic
                    .downcast_ref::<&str>()
                    .copied()
                    .or(panic.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("no message")
            ))),
        };
        let (ok, value) = answer.unwrap_or_else(|e| (false, e.into_value(py).into_any()));
        let resolve = RESOLVE.get_or_try_init(py, || {
            wrap_pyfunction!(resolve, py).map(|f| f.into_any().unbind())
        });
        // A closed loop (nobody awaits any more) refuses the call: nothing to tell then.
        if let Ok(resolve) = resolve {
            let _ = event_loop.call_method1(
                py,
                pyo3::intern!(py, "call_soon_threadsafe"),
                (resolve, future, ok, value),
            );
        }
    });
}

static RESOLVE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// On the loop's thread: settle the future unless it was cancelled meanwhile.
#[pyfunction]
fn resolve(future: &Bound<'_, PyAny>, ok: bool, value: &Bound<'_, PyAny>) -> PyResult<()> {
    if future.call_method0("done")?.is_truthy()? {
        return Ok(());
    }
    let method = if ok { "set_result" } else { "set_exception" };
    future.call_method1(method, (value,))?;
    Ok(())
}

/// The done callback of a future: its cancellation aborts the Rust task (dropping its future).
#[pyclass(frozen)]
struct AbortOnCancel(AbortHandle);

#[pymethods]
impl AbortOnCancel {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future.call_method0("cancelled")?.is_truthy()? {
            self.0.abort();
        }
        Ok(())
    }
}
