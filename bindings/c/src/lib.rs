//! The C ABI of the longrun client core (`crates/longrun`), for C callers and for the Go SDK
//! (`go/`, through cgo). It translates and never decides: every protocol decision (resume,
//! reconnect, timeouts, what an answer means) is the core's; this crate turns C arguments into
//! Rust values, runs the core's calls on a small runtime it owns, and turns results back.
//!
//! Conventions, the same for every function (the header, `include/longrun.h`, repeats them):
//!
//! - Every symbol starts with `longrun_`. Handles (`longrun_client`, `longrun_run`,
//!   `longrun_events`, `longrun_interrupt`, `longrun_error`) are opaque, created by the library
//!   and released with their `_free` function, which accepts NULL.
//! - A call that can fail returns a `longrun_code`: `LONGRUN_CODE_OK`, one code per error kind
//!   of the core (`longrun::ErrorKind`), or an ABI-level code (`NULL_ARGUMENT`, `INVALID_UTF8`,
//!   `INTERRUPTED`, `PANIC`). If its `err` argument is not NULL, `*err` is set to NULL on success
//!   and to a new `longrun_error` (message, HTTP status, problem, run value) on failure; the
//!   caller frees it with `longrun_error_free`. Out-parameters are written on success only.
//! - Strings in are UTF-8 with an explicit length (`ptr`, `len`; NULL is allowed when `len` is
//!   0); they are borrowed for the call only. Strings and JSON out are borrowed from the handle
//!   that returned them (valid until it is freed) or owned buffers the caller frees
//!   (`longrun_buf_free`, `longrun_batch_free`). Nothing out is NUL-terminated unless said.
//! - No panic crosses the boundary: each entry point catches it and returns `LONGRUN_CODE_PANIC`.
//! - Handles are thread-safe: any function may be called on a handle from any thread at the
//!   same time, except `_free`, which must be the last call on a handle.
//! - Blocking calls take an optional `longrun_interrupt`: triggering it from another thread makes
//!   the call return `LONGRUN_CODE_INTERRUPTED` at once (that is how Go's context cancellation
//!   reaches Rust). Interrupting a follow loses nothing: the next `longrun_events_next` carries on.

// An FFI crate: the unsafe code is the boundary itself, and each function states its contract.
#![allow(unsafe_code)]
#![allow(non_camel_case_types)]

use std::ffi::c_char;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use longrun::{ErrorKind, EventStream, FollowOptions, State};
use tokio::runtime::Runtime;

// A follow allocates each value's JSON text on the runtime's reader thread and frees it on the
// caller's thread after copying it out; mimalloc makes both cheap (glibc's arenas do not).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// ---------------------------------------------------------------------------------------------
// Codes and plain data

/// The result of a call: OK, one code per error kind of the client core (same names as
/// `longrun::ErrorKind`), or a code for misuse of the ABI itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum longrun_code {
    Ok = 0,
    /// The object or run does not exist (404).
    NotFound = 1,
    /// The run existed but its retention has passed (410).
    Gone = 2,
    /// The run ended `canceled` (from wait); the error's value is the event's value.
    Canceled = 3,
    /// The run ended `error` (from wait); the error's value is the event's value.
    RunFailed = 4,
    /// A client-side time limit passed; the run itself goes on.
    Timeout = 5,
    /// The server answered something longrun/1 does not allow.
    Protocol = 6,
    /// The network failed and retrying did not help.
    Transport = 7,
    /// The request was refused as invalid (4xx), or a bad argument was given to the client
    /// (a malformed URL, object name, run id, options or arguments JSON).
    InvalidArgument = 8,
    /// The server failed or refused for its own reasons (5xx).
    Server = 9,
    /// The server needs a token and got none it knows (401).
    Unauthorized = 10,
    /// The token does not allow this (403).
    Forbidden = 11,
    /// A response hook's delivery failed `longrun_verify_webhook` (a missing header, a stale
    /// timestamp, no matching signature).
    WebhookRejected = 12,
    /// A required pointer argument was NULL.
    NullArgument = 100,
    /// A string argument was not UTF-8.
    InvalidUtf8 = 101,
    /// The call was interrupted through its `longrun_interrupt`.
    Interrupted = 102,
    /// The library panicked (a bug in longrun); the panic was caught at the boundary.
    Panic = 103,
}

/// The state of a run, as in its events.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum longrun_state {
    Queued = 0,
    Running = 1,
    Success = 2,
    Error = 3,
    Canceled = 4,
}

/// How a follow reads events.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum longrun_transport {
    /// The client's transport (the `transport` option; SSE unless set).
    Default = 0,
    /// Server-Sent Events (falling back to long polling by itself when needed).
    Sse = 1,
    /// Long polling only.
    Poll = 2,
    /// Over the client's WebSocket (spec §28).
    WebSocket = 3,
}

/// What `longrun_events_next` found.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum longrun_next {
    /// The batch holds one or more events.
    Events = 0,
    /// The follow is over (after the terminal event); the batch is empty.
    End = 1,
    /// Nothing arrived within the timeout; the batch is empty and the follow goes on.
    Pending = 2,
}

/// What a HEAD reports about a run.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct longrun_run_status {
    pub state: longrun_state,
    /// The id of the run's newest event.
    pub last_event_id: u64,
}

/// The answer to a cancel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct longrun_cancel_outcome {
    /// false: the run is being canceled (or already was) and will end `canceled`.
    /// true: it had already ended in `state` (`success` or `error`); nothing was changed.
    pub already_ended: bool,
    /// The state it had ended in, when `already_ended`; `LONGRUN_STATE_CANCELED` otherwise.
    pub state: longrun_state,
}

/// An owned byte buffer (UTF-8 JSON) returned by the library. Free it with `longrun_buf_free`.
#[repr(C)]
#[derive(Debug)]
pub struct longrun_buf {
    pub ptr: *mut u8,
    pub len: usize,
}

/// One event of a batch. Its value is the JSON at `values + value_offset`, `value_len` bytes
/// long: the text the server sent, checked to be one JSON value (compact from the reference
/// server; another server's spacing inside the value is kept).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct longrun_event {
    pub id: u64,
    pub state: longrun_state,
    pub value_offset: usize,
    pub value_len: usize,
}

/// The library-owned storage behind a `longrun_batch`.
pub struct longrun_batch_data {
    events: Vec<longrun_event>,
    values: Vec<u8>,
}

/// A batch of events, filled by `longrun_events_next`. `events` (`len` of them) and `values`
/// (every event's value JSON, back to back) are owned by the library until
/// `longrun_batch_free`, which the caller calls once per filled batch (it accepts an empty or
/// already freed batch).
#[repr(C)]
#[derive(Debug)]
pub struct longrun_batch {
    pub next: longrun_next,
    pub events: *const longrun_event,
    pub len: usize,
    pub values: *const u8,
    pub values_len: usize,
    /// Private: the storage `longrun_batch_free` releases.
    pub data: *mut longrun_batch_data,
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An error: its code, message and, when the error came from an HTTP answer or a run's end,
/// the HTTP status, the problem details and the run's value. Free it with `longrun_error_free`.
#[derive(Debug)]
pub struct longrun_error {
    code: longrun_code,
    message: String,
    status: u16,
    problem: Option<String>,
    value: Option<String>,
}

impl longrun_error {
    fn new(code: longrun_code, message: impl Into<String>) -> Self {
        longrun_error {
            code,
            message: message.into(),
            status: 0,
            problem: None,
            value: None,
        }
    }
}

/// The one table from the core's error kinds to codes. The core's enum is `non_exhaustive`; a
/// kind added there without a code here is reported as `PROTOCOL` until it gets one (the test
/// `every_kind_has_its_own_code` fails first).
fn code_of(kind: ErrorKind) -> longrun_code {
    match kind {
        ErrorKind::NotFound => longrun_code::NotFound,
        ErrorKind::Gone => longrun_code::Gone,
        ErrorKind::Canceled => longrun_code::Canceled,
        ErrorKind::RunFailed => longrun_code::RunFailed,
        ErrorKind::Timeout => longrun_code::Timeout,
        ErrorKind::Protocol => longrun_code::Protocol,
        ErrorKind::Transport => longrun_code::Transport,
        ErrorKind::InvalidArgument => longrun_code::InvalidArgument,
        ErrorKind::Server => longrun_code::Server,
        ErrorKind::Unauthorized => longrun_code::Unauthorized,
        ErrorKind::Forbidden => longrun_code::Forbidden,
        ErrorKind::WebhookRejected => longrun_code::WebhookRejected,
        _ => longrun_code::Protocol,
    }
}

impl From<longrun::Error> for longrun_error {
    fn from(e: longrun::Error) -> Self {
        longrun_error {
            code: code_of(e.kind()),
            message: e.to_string(),
            status: e.status().unwrap_or(0),
            problem: e.problem().and_then(|p| serde_json::to_string(p).ok()),
            value: e.value().map(|v| v.to_string()),
        }
    }
}

type Result<T, E = longrun_error> = std::result::Result<T, E>;

fn null(what: &str) -> longrun_error {
    longrun_error::new(longrun_code::NullArgument, format!("{what} is NULL"))
}

fn invalid(message: impl Into<String>) -> longrun_error {
    longrun_error::new(longrun_code::InvalidArgument, message)
}

/// Run one entry point's body: catch any panic, report the outcome through `err`.
///
/// # Safety
/// `err` is NULL or valid for writing a pointer.
unsafe fn guard(err: *mut *mut longrun_error, body: impl FnOnce() -> Result<()>) -> longrun_code {
    let outcome = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        Err(longrun_error::new(
            longrun_code::Panic,
            format!("longrun panicked (a bug, please report it): {what}"),
        ))
    });
    let (code, error) = match outcome {
        Ok(()) => (longrun_code::Ok, std::ptr::null_mut()),
        Err(e) => (e.code, Box::into_raw(Box::new(e))),
    };
    if err.is_null() {
        if !error.is_null() {
            // SAFETY: just made by Box::into_raw, not shared.
            drop(unsafe { Box::from_raw(error) });
        }
    } else {
        // SAFETY: the caller's contract.
        unsafe { *err = error };
    }
    code
}

/// Run a body that cannot fail, catching a panic: `fallback` then.
fn guard_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// A borrowed string argument. NULL is allowed with length 0 (an empty string).
///
/// # Safety
/// `ptr` is NULL or valid for reading `len` bytes for the lifetime `'a`.
unsafe fn str_arg<'a>(ptr: *const u8, len: usize, what: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return if len == 0 { Ok("") } else { Err(null(what)) };
    }
    // SAFETY: the caller's contract.
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
    std::str::from_utf8(bytes).map_err(|e| {
        longrun_error::new(
            longrun_code::InvalidUtf8,
            format!("{what} is not UTF-8: {e}"),
        )
    })
}

/// # Safety
/// `ptr` is NULL or points to a live `T` made by this library.
unsafe fn handle<'a, T>(ptr: *const T, what: &str) -> Result<&'a T> {
    // SAFETY: the caller's contract.
    unsafe { ptr.as_ref() }.ok_or_else(|| null(what))
}

/// # Safety
/// `ptr` is NULL or valid for writing a `T`.
unsafe fn out<T>(ptr: *mut T, what: &str) -> Result<&'static mut T> {
    // SAFETY: the caller's contract.
    unsafe { ptr.as_mut() }.ok_or_else(|| null(what))
}

fn state_of(state: State) -> longrun_state {
    match state {
        State::Queued => longrun_state::Queued,
        State::Running => longrun_state::Running,
        State::Success => longrun_state::Success,
        State::Error => longrun_state::Error,
        State::Canceled => longrun_state::Canceled,
    }
}

/// A static, NUL-terminated name for a `longrun_code`: the core's kind name (`"NotFound"`, …),
/// the ABI-level name (`"Ok"`, `"NullArgument"`, `"InvalidUtf8"`, `"Interrupted"`, `"Panic"`),
/// or `"Unknown"` for a value that is no code. (An `int32_t`, not the enum, so that any value
/// is safe to pass.)
#[unsafe(no_mangle)]
pub extern "C" fn longrun_code_name(code: i32) -> *const c_char {
    let name: &'static [u8] = match code_from(code) {
        None => b"Unknown\0",
        Some(longrun_code::Ok) => b"Ok\0",
        Some(longrun_code::NotFound) => b"NotFound\0",
        Some(longrun_code::Gone) => b"Gone\0",
        Some(longrun_code::Canceled) => b"Canceled\0",
        Some(longrun_code::RunFailed) => b"RunFailed\0",
        Some(longrun_code::Timeout) => b"Timeout\0",
        Some(longrun_code::Protocol) => b"Protocol\0",
        Some(longrun_code::Transport) => b"Transport\0",
        Some(longrun_code::InvalidArgument) => b"InvalidArgument\0",
        Some(longrun_code::Server) => b"Server\0",
        Some(longrun_code::Unauthorized) => b"Unauthorized\0",
        Some(longrun_code::Forbidden) => b"Forbidden\0",
        Some(longrun_code::WebhookRejected) => b"WebhookRejected\0",
        Some(longrun_code::NullArgument) => b"NullArgument\0",
        Some(longrun_code::InvalidUtf8) => b"InvalidUtf8\0",
        Some(longrun_code::Interrupted) => b"Interrupted\0",
        Some(longrun_code::Panic) => b"Panic\0",
    };
    name.as_ptr().cast()
}

fn code_from(code: i32) -> Option<longrun_code> {
    use longrun_code::*;
    [
        Ok,
        NotFound,
        Gone,
        Canceled,
        RunFailed,
        Timeout,
        Protocol,
        Transport,
        InvalidArgument,
        Server,
        Unauthorized,
        Forbidden,
        WebhookRejected,
        NullArgument,
        InvalidUtf8,
        Interrupted,
        Panic,
    ]
    .into_iter()
    .find(|c| *c as i32 == code)
}

/// A static, NUL-terminated name of the core's error kind number `index` (`longrun::ErrorKind::ALL`
/// in order: `"NotFound"`, …), or NULL past the last one: the list an SDK checks its table of
/// kinds against, so that a kind added to the core fails the SDK that lacks it.
#[unsafe(no_mangle)]
pub extern "C" fn longrun_error_kind_name(index: usize) -> *const c_char {
    static NAMES: std::sync::OnceLock<Vec<std::ffi::CString>> = std::sync::OnceLock::new();
    guard_value(std::ptr::null(), || {
        let names = NAMES.get_or_init(|| {
            ErrorKind::ALL
                .iter()
                .map(|k| std::ffi::CString::new(k.as_str()).expect("kind names have no NUL"))
                .collect()
        });
        names
            .get(index)
            .map_or(std::ptr::null(), |name| name.as_ptr())
    })
}

/// A static, NUL-terminated state name as on the wire (`"queued"`, …, `"canceled"`) for a
/// `longrun_state`, or `"unknown"` for a value that is no state.
#[unsafe(no_mangle)]
pub extern "C" fn longrun_state_name(state: i32) -> *const c_char {
    let name: &'static [u8] = match state {
        0 => b"queued\0",
        1 => b"running\0",
        2 => b"success\0",
        3 => b"error\0",
        4 => b"canceled\0",
        _ => b"unknown\0",
    };
    name.as_ptr().cast()
}

/// The error's code (`LONGRUN_CODE_OK` for NULL).
///
/// # Safety
/// `error` is NULL or a live error from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_error_code(error: *const longrun_error) -> longrun_code {
    // SAFETY: the caller's contract.
    unsafe { error.as_ref() }.map_or(longrun_code::Ok, |e| e.code)
}

/// The error's message, UTF-8, `*len` bytes, not NUL-terminated; borrowed from `error` (valid
/// until it is freed). NULL (and `*len` = 0) for a NULL error. `len` may be NULL.
///
/// # Safety
/// `error` is NULL or a live error from this library; `len` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_error_message(
    error: *const longrun_error,
    len: *mut usize,
) -> *const u8 {
    // SAFETY: the caller's contract.
    unsafe { borrowed(error.as_ref().map(|e| e.message.as_str()), len) }
}

/// The HTTP status behind the error, or 0 when there is none.
///
/// # Safety
/// `error` is NULL or a live error from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_error_status(error: *const longrun_error) -> u16 {
    // SAFETY: the caller's contract.
    unsafe { error.as_ref() }.map_or(0, |e| e.status)
}

/// The server's problem details (RFC 9457) as compact JSON, borrowed from `error`; NULL (and
/// `*len` = 0) when the error did not come with one. `len` may be NULL.
///
/// # Safety
/// `error` is NULL or a live error from this library; `len` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_error_problem(
    error: *const longrun_error,
    len: *mut usize,
) -> *const u8 {
    // SAFETY: the caller's contract.
    unsafe { borrowed(error.as_ref().and_then(|e| e.problem.as_deref()), len) }
}

/// For `RUN_FAILED` and `CANCELED`: the terminal event's value as compact JSON, borrowed from
/// `error`; NULL (and `*len` = 0) otherwise. `len` may be NULL.
///
/// # Safety
/// `error` is NULL or a live error from this library; `len` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_error_value(
    error: *const longrun_error,
    len: *mut usize,
) -> *const u8 {
    // SAFETY: the caller's contract.
    unsafe { borrowed(error.as_ref().and_then(|e| e.value.as_deref()), len) }
}

/// Free an error. NULL is allowed.
///
/// # Safety
/// `error` is NULL or an error from this library not yet freed; it is invalid afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_error_free(error: *mut longrun_error) {
    if !error.is_null() {
        // SAFETY: the caller's contract; dropping plain strings cannot panic.
        drop(unsafe { Box::from_raw(error) });
    }
}

/// # Safety
/// `len` is NULL or writable.
unsafe fn borrowed(s: Option<&str>, len: *mut usize) -> *const u8 {
    let (ptr, n) = s.map_or((std::ptr::null(), 0), |s| (s.as_ptr(), s.len()));
    if !len.is_null() {
        // SAFETY: the caller's contract.
        unsafe { *len = n };
    }
    ptr
}

// ---------------------------------------------------------------------------------------------
// Owned buffers

fn buf_of(bytes: Vec<u8>) -> longrun_buf {
    let boxed = bytes.into_boxed_slice();
    let len = boxed.len();
    longrun_buf {
        ptr: Box::into_raw(boxed).cast(),
        len,
    }
}

/// Free a buffer the library filled, and set it to empty. NULL, and an empty or already freed
/// buffer, are allowed.
///
/// # Safety
/// `buf` is NULL or points to a `longrun_buf` that is empty or was filled by this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_buf_free(buf: *mut longrun_buf) {
    // SAFETY: the caller's contract.
    let Some(buf) = (unsafe { buf.as_mut() }) else {
        return;
    };
    if !buf.ptr.is_null() {
        let slice = std::ptr::slice_from_raw_parts_mut(buf.ptr, buf.len);
        // SAFETY: made by `buf_of` from a boxed slice of exactly this length.
        drop(unsafe { Box::from_raw(slice) });
    }
    buf.ptr = std::ptr::null_mut();
    buf.len = 0;
}

// ---------------------------------------------------------------------------------------------
// Interrupts

/// A flag another thread raises to stop blocking calls. Once triggered it stays triggered:
/// every call given it returns `LONGRUN_CODE_INTERRUPTED` at once (use a new one per
/// cancellable operation, e.g. per Go context).
pub struct longrun_interrupt {
    interrupt: longrun::Interrupt,
}

/// A new, untriggered interrupt. Free it with `longrun_interrupt_free` once no call that was
/// given it is still running. Returns NULL only if the library panicked.
#[unsafe(no_mangle)]
pub extern "C" fn longrun_interrupt_new() -> *mut longrun_interrupt {
    guard_value(std::ptr::null_mut(), || {
        Box::into_raw(Box::new(longrun_interrupt {
            interrupt: longrun::Interrupt::new(),
        }))
    })
}

/// Trigger the interrupt: calls blocked on it return `LONGRUN_CODE_INTERRUPTED` promptly, from
/// whatever thread they run on. Safe to call from any thread, any number of times. NULL is
/// allowed (and does nothing).
///
/// # Safety
/// `interrupt` is NULL or a live interrupt from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_interrupt_trigger(interrupt: *const longrun_interrupt) {
    // SAFETY: the caller's contract.
    if let Some(i) = unsafe { interrupt.as_ref() } {
        guard_value((), || i.interrupt.raise())
    }
}

/// Free an interrupt. NULL is allowed.
///
/// # Safety
/// `interrupt` is NULL or an interrupt from this library not yet freed, which no running call
/// uses any more; it is invalid afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_interrupt_free(interrupt: *mut longrun_interrupt) {
    if !interrupt.is_null() {
        // SAFETY: the caller's contract.
        drop(unsafe { Box::from_raw(interrupt) });
    }
}

/// Drive `fut` to completion on `rt`, unless `interrupt` is triggered first (then the future is
/// dropped: the core's futures are cancel-safe, so nothing is lost).
fn block<T>(
    rt: &Runtime,
    interrupt: Option<&longrun_interrupt>,
    fut: impl Future<Output = longrun::Result<T>>,
) -> Result<T> {
    let Some(interrupt) = interrupt else {
        return rt.block_on(fut).map_err(longrun_error::from);
    };
    match rt.block_on(interrupt.interrupt.run(fut)) {
        Some(result) => result.map_err(longrun_error::from),
        None => Err(interrupted()),
    }
}

/// Free a handle made by `Box::into_raw` inside its runtime: dropping a follow, a stream or a
/// subscription may touch its connection (an unsubscribe goes out on the socket). NULL is
/// allowed.
///
/// # Safety
/// `ptr` is NULL or a handle of this library not yet freed, with no call on it still running.
unsafe fn free_on_runtime<T>(ptr: *mut T, rt: fn(&T) -> &Arc<Runtime>) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: the caller's contract.
    let handle = unsafe { Box::from_raw(ptr) };
    guard_value((), move || {
        let rt = rt(&handle).clone();
        let _guard = rt.enter();
        drop(handle);
    });
}

/// What [`take_next`] found.
enum Taken<T> {
    Pending,
    End,
    Item(T),
}

/// The next item of the stream in `slot` within `timeout_ms` (negative: no limit). At its end
/// or on its (final) error the stream is dropped at once, on the runtime, so its connection or
/// subscription goes now; a slot already empty is the end.
fn take_next<S, T>(
    rt: &Runtime,
    slot: &Mutex<Option<S>>,
    interrupt: Option<&longrun_interrupt>,
    timeout_ms: i64,
) -> Result<Taken<T>>
where
    S: futures::Stream<Item = longrun::Result<T>> + Unpin,
{
    let mut guard = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(stream) = guard.as_mut() else {
        return Ok(Taken::End);
    };
    match next_item(rt, interrupt, stream, timeout_ms)? {
        None => Ok(Taken::Pending),
        Some(Some(Ok(item))) => Ok(Taken::Item(item)),
        Some(end) => {
            let _enter = rt.enter();
            *guard = None;
            match end {
                Some(Err(e)) => Err(e.into()),
                _ => Ok(Taken::End),
            }
        }
    }
}

/// The next item of a stream within `timeout_ms` (negative: no limit): `None` when the time
/// passed (nothing lost: the streams' `next` is cancel-safe), `Some(None)` at its end.
fn next_item<S: futures::Stream + Unpin>(
    rt: &Runtime,
    interrupt: Option<&longrun_interrupt>,
    stream: &mut S,
    timeout_ms: i64,
) -> Result<Option<Option<S::Item>>> {
    use futures::StreamExt;
    let limit = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
    block(rt, interrupt, async {
        match limit {
            None => Ok(Some(stream.next().await)),
            Some(limit) => Ok(tokio::time::timeout(limit, stream.next()).await.ok()),
        }
    })
}

fn interrupted() -> longrun_error {
    longrun_error::new(longrun_code::Interrupted, "the call was interrupted")
}

// ---------------------------------------------------------------------------------------------
// Clients

/// A client for one server: its settings, its connections and the runtime that drives them.
pub struct longrun_client {
    rt: Arc<Runtime>,
    client: longrun::Client,
}

/// Make a client for the server at `url` (e.g. `http://127.0.0.1:8080`).
///
/// `options` is NULL (`options_len` 0) or a JSON object with any of: `token` (string: sends
/// `Authorization: Bearer …`), `headers` (array of `[name, value]`), `timeout_ms` (one request's
/// limit), `transport` (`"sse"`, `"poll"` or `"ws"`), `user_agent`, `poll_wait_ms`, `idle_timeout_ms`,
/// `sse_fallback_after_ms`, `reconnect` (`{max_attempts, initial_delay_ms, max_delay_ms}`).
/// Defaults are the core's. On success `*client` is a new client; free it with
/// `longrun_client_free`. `url` and `options` are borrowed for the call only.
///
/// # Safety
/// Pointers are NULL or valid for their lengths / for writing; `err` as in the conventions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_client_new(
    url: *const u8,
    url_len: usize,
    options: *const u8,
    options_len: usize,
    client: *mut *mut longrun_client,
    err: *mut *mut longrun_error,
) -> longrun_code {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        guard(err, || {
            let url = str_arg(url, url_len, "url")?;
            let options = str_arg(options, options_len, "options")?;
            let client = out(client, "client")?;
            // The options are the core's `ClientOptions`: defaults and names live there once.
            let builder = longrun::ClientOptions::from_json(options)?
                .apply(longrun::ClientBuilder::new(url))?;
            // One worker thread drives the I/O, so any number of caller threads can block on
            // calls at once (as `longrun::blocking::Client` does).
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("longrun-client")
                .enable_all()
                .build()
                .map_err(|e| {
                    longrun_error::new(
                        longrun_code::Transport,
                        format!("cannot start the client runtime: {e}"),
                    )
                })?;
            let built = {
                let _guard = rt.enter();
                builder.build()?
            };
            *client = Box::into_raw(Box::new(longrun_client {
                rt: Arc::new(rt),
                client: built,
            }));
            Ok(())
        })
    }
}

/// Free a client. NULL is allowed. Event streams made from it stay usable (they keep what they
/// need alive).
///
/// # Safety
/// `client` is NULL or a client from this library not yet freed, with no call on it still
/// running; it is invalid afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_client_free(client: *mut longrun_client) {
    if !client.is_null() {
        // SAFETY: the caller's contract.
        let client = unsafe { Box::from_raw(client) };
        guard_value((), move || drop(client));
    }
}

// ---------------------------------------------------------------------------------------------
// Runs

/// A run: its object, id and absolute URL (the portable resume token). Immutable.
pub struct longrun_run {
    run: longrun::Run,
    id: String,
}

impl longrun_run {
    fn boxed(run: longrun::Run) -> *mut longrun_run {
        let id = run.id().to_string();
        Box::into_raw(Box::new(longrun_run { run, id }))
    }
}

/// Rebuild a run from its URL (e.g. `http://host:8080/count/0f8fad5b-…`). On success `*run`
/// is a new run; free it with `longrun_run_free`.
///
/// # Safety
/// Pointers are NULL or valid for their lengths / for writing; `err` as in the conventions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_run_from_url(
    url: *const u8,
    url_len: usize,
    run: *mut *mut longrun_run,
    err: *mut *mut longrun_error,
) -> longrun_code {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        guard(err, || {
            let url = str_arg(url, url_len, "url")?;
            let run = out(run, "run")?;
            *run = longrun_run::boxed(longrun::Run::from_url(url)?);
            Ok(())
        })
    }
}

/// The run `object`/`id` on the client's server. On success `*run` is a new run; free it with
/// `longrun_run_free`.
///
/// # Safety
/// Pointers are NULL, live handles, or valid for their lengths / for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_client_run(
    client: *const longrun_client,
    object: *const u8,
    object_len: usize,
    id: *const u8,
    id_len: usize,
    run: *mut *mut longrun_run,
    err: *mut *mut longrun_error,
) -> longrun_code {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        guard(err, || {
            let client = handle(client, "client")?;
            let object = str_arg(object, object_len, "object")?;
            let id = str_arg(id, id_len, "id")?;
            let run = out(run, "run")?;
            *run = longrun_run::boxed(client.client.run(object, id)?);
            Ok(())
        })
    }
}

/// The run's object name, UTF-8, `*len` bytes, borrowed from `run` (valid until it is freed).
/// NULL (and `*len` = 0) for a NULL run. `len` may be NULL.
///
/// # Safety
/// `run` is NULL or a live run; `len` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_run_object(run: *const longrun_run, len: *mut usize) -> *const u8 {
    // SAFETY: the caller's contract.
    unsafe { borrowed(run.as_ref().map(|r| r.run.object()), len) }
}

/// The run's id (lowercase hyphenated UUID), borrowed like `longrun_run_object`.
///
/// # Safety
/// `run` is NULL or a live run; `len` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_run_id(run: *const longrun_run, len: *mut usize) -> *const u8 {
    // SAFETY: the caller's contract.
    unsafe { borrowed(run.as_ref().map(|r| r.id.as_str()), len) }
}

/// The run's absolute URL, borrowed like `longrun_run_object`.
///
/// # Safety
/// `run` is NULL or a live run; `len` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_run_url(run: *const longrun_run, len: *mut usize) -> *const u8 {
    // SAFETY: the caller's contract.
    unsafe { borrowed(run.as_ref().map(|r| r.run.url().as_str()), len) }
}

/// Free a run. NULL is allowed.
///
/// # Safety
/// `run` is NULL or a run from this library not yet freed; it is invalid afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_run_free(run: *mut longrun_run) {
    if !run.is_null() {
        // SAFETY: the caller's contract.
        drop(unsafe { Box::from_raw(run) });
    }
}

// ---------------------------------------------------------------------------------------------
// Calls

/// Start a run of `object` with `args`, a JSON object (NULL / length 0: no arguments, `{}`).
/// Blocks until the server answered. On success `*run` is a new run; free it with
/// `longrun_run_free`. `interrupt` may be NULL.
///
/// # Safety
/// Pointers are NULL, live handles, or valid for their lengths / for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_client_submit(
    client: *const longrun_client,
    object: *const u8,
    object_len: usize,
    args: *const u8,
    args_len: usize,
    interrupt: *const longrun_interrupt,
    run: *mut *mut longrun_run,
    err: *mut *mut longrun_error,
) -> longrun_code {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        longrun_client_submit_with_key(
            client,
            object,
            object_len,
            args,
            args_len,
            std::ptr::null(),
            0,
            interrupt,
            run,
            err,
        )
    }
}

/// `longrun_client_submit` with an idempotency key (`Idempotency-Key`; NULL: none): the server
/// answers a repeat of the key with the same run, and the submit is sent again, with the same
/// key, when its connection fails before the reply.
///
/// # Safety
/// Pointers are NULL, live handles, or valid for their lengths / for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_client_submit_with_key(
    client: *const longrun_client,
    object: *const u8,
    object_len: usize,
    args: *const u8,
    args_len: usize,
    idempotency_key: *const u8,
    idempotency_key_len: usize,
    interrupt: *const longrun_interrupt,
    run: *mut *mut longrun_run,
    err: *mut *mut longrun_error,
) -> longrun_code {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        guard(err, || {
            let client = handle(client, "client")?;
            let object = str_arg(object, object_len, "object")?;
            let args = str_arg(args, args_len, "args")?;
            let key = if idempotency_key.is_null() {
                None
            } else {
                Some(str_arg(idempotency_key, idempotency_key_len, "idempotency_key")?.to_owned())
            };
            let options = longrun::SubmitOptions {
                idempotency_key: key,
                ..Default::default()
            };
            submit(
                client,
                object,
                args,
                options,
                interrupt.as_ref(),
                out(run, "run")?,
            )
        })
    }
}

/// What every submit entry point does once its arguments are read.
fn submit(
    client: &longrun_client,
    object: &str,
    args: &str,
    options: longrun::SubmitOptions,
    interrupt: Option<&longrun_interrupt>,
    run: &mut *mut longrun_run,
) -> Result<()> {
    let args = submit_args(args)?;
    let submitted = block(
        &client.rt,
        interrupt,
        client.client.submit_with(object, args, options),
    )?;
    *run = longrun_run::boxed(submitted);
    Ok(())
}

/// The arguments JSON of a submit: empty is `{}`.
fn submit_args(args: &str) -> Result<serde_json::Value> {
    if args.is_empty() {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    serde_json::from_str(args)
        .map_err(|e| invalid(format!("the arguments are not valid JSON: {e}")))
}

/// `longrun_client_submit` with submit options: `options` is NULL (`options_len` 0) or a JSON
/// object read by the core's `SubmitOptions::from_json`, with any of `idempotency_key`,
/// `deadline_ms` (`Longrun-Deadline`: the run ends `canceled` with reason `deadline` when it
/// passes), `wait_ms` (`Prefer: wait`: the server holds the submit until the run ends, up to
/// 60 s), `hook` (`Longrun-Hook`: an `http(s)://` or `unix:///` URL) and `hook_events`
/// (`"ended"` or `"all"`). An unknown member is `INVALID_ARGUMENT`.
///
/// # Safety
/// Pointers are NULL, live handles, or valid for their lengths / for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_client_submit_with_options(
    client: *const longrun_client,
    object: *const u8,
    object_len: usize,
    args: *const u8,
    args_len: usize,
    options: *const u8,
    options_len: usize,
    interrupt: *const longrun_interrupt,
    run: *mut *mut longrun_run,
    err: *mut *mut longrun_error,
) -> longrun_code {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        guard(err, || {
            let client = handle(client, "client")?;
            let object = str_arg(object, object_len, "object")?;
            let args = str_arg(args, args_len, "args")?;
            let options =
                longrun::SubmitOptions::from_json(str_arg(options, options_len, "options")?)?;
            submit(
                client,
                object,
                args,
                options,
                interrupt.as_ref(),
                out(run, "run")?,
            )
        })
    }
}

/// Submit and wait for the run's end in one call (the core's `Client::call`: `Prefer: wait`,
/// then a follow if the run is still going). `options` as in
/// `longrun_client_submit_with_options` (its `wait_ms` is not used: the call asks for its
/// own). The outcomes of `longrun_client_wait`: `*value` the `success` value (free it with
/// `longrun_buf_free`), `RUN_FAILED`, `CANCELED`, `TIMEOUT` after `timeout_ms` ≥ 0 (negative:
/// no limit). `interrupt` may be NULL.
///
/// # Safety
/// Pointers are NULL, live handles, or valid for their lengths / for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_client_call(
    client: *const longrun_client,
    object: *const u8,
    object_len: usize,
    args: *const u8,
    args_len: usize,
    options: *const u8,
    options_len: usize,
    timeout_ms: i64,
    interrupt: *const longrun_interrupt,
    value: *mut longrun_buf,
    err: *mut *mut longrun_error,
) -> longrun_code {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        guard(err, || {
            let client = handle(client, "client")?;
            let object = str_arg(object, object_len, "object")?;
            let args = submit_args(str_arg(args, args_len, "args")?)?;
            let options =
                longrun::SubmitOptions::from_json(str_arg(options, options_len, "options")?)?;
            let value = out(value, "value")?;
            let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
            let result = block(
                &client.rt,
                interrupt.as_ref(),
                client.client.call(object, args, options, timeout),
            )?;
            *value = buf_of(result.to_string().into_bytes());
            Ok(())
        })
    }
}

/// Verify a response hook's delivery (the core's `longrun::webhook::verify_json`), on the
/// receiving side. `secret` is the server's `whsec_…`; `headers` JSON: an object of names to a
/// string or a list of strings (Go's `http.Header`), or a list of `[name, value]` pairs;
/// `body` the bytes as received; `tolerance_ms` ≥ 0 how far `webhook-timestamp` may be from
/// now (negative: the core's 5 minutes). `OK`: authentic. `WEBHOOK_REJECTED`: a header is
/// missing, the timestamp is out of the tolerance, or no signature matches.
/// `INVALID_ARGUMENT`: a malformed secret or headers.
///
/// # Safety
/// Pointers are NULL or valid for their lengths; `err` as in the conventions.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_verify_webhook(
    secret: *const u8,
    secret_len: usize,
    headers: *const u8,
    headers_len: usize,
    body: *const u8,
    body_len: usize,
    tolerance_ms: i64,
    err: *mut *mut longrun_error,
) -> longrun_code {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        guard(err, || {
            let secret = str_arg(secret, secret_len, "secret")?;
            let headers: serde_json::Value =
                serde_json::from_str(str_arg(headers, headers_len, "headers")?)
                    .map_err(|e| invalid(format!("the headers are not valid JSON: {e}")))?;
            let body: &[u8] = if body.is_null() {
                if body_len != 0 {
                    return Err(null("body"));
                }
                &[]
            } else {
                std::slice::from_raw_parts(body, body_len)
            };
            let tolerance = u64::try_from(tolerance_ms).ok().map(Duration::from_millis);
            longrun::webhook::verify_json(secret, &headers, body, tolerance)?;
            Ok(())
        })
    }
}

/// Ask the server to cancel a run; `*outcome` says whether it was accepted or the run had
/// already ended. `interrupt` may be NULL.
///
/// # Safety
/// Pointers are NULL, live handles, or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_client_cancel(
    client: *const longrun_client,
    run: *const longrun_run,
    interrupt: *const longrun_interrupt,
    outcome: *mut longrun_cancel_outcome,
    err: *mut *mut longrun_error,
) -> longrun_code {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        guard(err, || {
            let client = handle(client, "client")?;
            let run = handle(run, "run")?;
            let outcome = out(outcome, "outcome")?;
            let answer = block(
                &client.rt,
                interrupt.as_ref(),
                client.client.cancel(&run.run),
            )?;
            *outcome = match answer {
                longrun::CancelOutcome::Accepted => longrun_cancel_outcome {
                    already_ended: false,
                    state: longrun_state::Canceled,
                },
                longrun::CancelOutcome::AlreadyEnded(state) => longrun_cancel_outcome {
                    already_ended: true,
                    state: state_of(state),
                },
            };
            Ok(())
        })
    }
}

/// The run's state and newest event id (HEAD). A run that does not exist is `NOT_FOUND`.
/// `interrupt` may be NULL.
///
/// # Safety
/// Pointers are NULL, live handles, or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_client_status(
    client: *const longrun_client,
    run: *const longrun_run,
    interrupt: *const longrun_interrupt,
    status: *mut longrun_run_status,
    err: *mut *mut longrun_error,
) -> longrun_code {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        guard(err, || {
            let client = handle(client, "client")?;
            let run = handle(run, "run")?;
            let status = out(status, "status")?;
            let answer = block(
                &client.rt,
                interrupt.as_ref(),
                client.client.status(&run.run),
            )?;
            *status = longrun_run_status {
                state: state_of(answer.state),
                last_event_id: answer.last_event_id,
            };
            Ok(())
        })
    }
}

/// Does the run exist? `*exists` is false for a run the server does not know; a run whose
/// retention has passed is `GONE`. `interrupt` may be NULL.
///
/// # Safety
/// Pointers are NULL, live handles, or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_client_exists(
    client: *const longrun_client,
    run: *const longrun_run,
    interrupt: *const longrun_interrupt,
    exists: *mut bool,
    err: *mut *mut longrun_error,
) -> longrun_code {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        guard(err, || {
            let client = handle(client, "client")?;
            let run = handle(run, "run")?;
            let exists = out(exists, "exists")?;
            *exists = block(
                &client.rt,
                interrupt.as_ref(),
                client.client.exists(&run.run),
            )?;
            Ok(())
        })
    }
}

/// Follow the run to its end and put its `success` value (compact JSON) in `*value`, an owned
/// buffer to free with `longrun_buf_free`. An `error` end is `RUN_FAILED` and a `canceled` end
/// `CANCELED`, each with the event's value on the error. `timeout_ms` ≥ 0 limits the wait
/// (`TIMEOUT` then; the run goes on); negative: no limit. `interrupt` may be NULL.
///
/// # Safety
/// Pointers are NULL, live handles, or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_client_wait(
    client: *const longrun_client,
    run: *const longrun_run,
    timeout_ms: i64,
    interrupt: *const longrun_interrupt,
    value: *mut longrun_buf,
    err: *mut *mut longrun_error,
) -> longrun_code {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        guard(err, || {
            let client = handle(client, "client")?;
            let run = handle(run, "run")?;
            let value = out(value, "value")?;
            let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
            let result = block(
                &client.rt,
                interrupt.as_ref(),
                client.client.wait(&run.run, timeout),
            )?;
            *value = buf_of(result.to_string().into_bytes());
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Follows

/// The events of one follow: ordered, each once, resuming by itself over reconnects.
pub struct longrun_events {
    rt: Arc<Runtime>,
    stream: Mutex<EventStream>,
}

/// Start following a run: the events after `*since` (the id of the last event already seen;
/// `since` NULL: from event 0, so every cursor a `uint64_t` holds is one, and no value of it
/// means "none"), by `transport` (a `longrun_transport`; an `int32_t` so that any
/// value is safe to pass: others are `INVALID_ARGUMENT`). Nothing is sent until the first
/// `longrun_events_next`. On success `*events` is a new stream; free it with
/// `longrun_events_free`. The stream does not borrow `client` or `run`.
///
/// # Safety
/// Pointers are NULL, live handles, or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_client_follow(
    client: *const longrun_client,
    run: *const longrun_run,
    since: *const u64,
    transport: i32,
    events: *mut *mut longrun_events,
    err: *mut *mut longrun_error,
) -> longrun_code {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        guard(err, || {
            let client = handle(client, "client")?;
            let run = handle(run, "run")?;
            let events = out(events, "events")?;
            let options = FollowOptions {
                // NULL or readable: the caller's contract.
                since: since.as_ref().copied(),
                transport: match transport {
                    t if t == longrun_transport::Default as i32 => None,
                    t if t == longrun_transport::Sse as i32 => Some(longrun::Transport::Sse),
                    t if t == longrun_transport::Poll as i32 => Some(longrun::Transport::Poll),
                    t if t == longrun_transport::WebSocket as i32 => {
                        Some(longrun::Transport::WebSocket)
                    }
                    other => return Err(invalid(format!("{other} is not a longrun_transport"))),
                },
            };
            let stream = {
                let _guard = client.rt.enter();
                // Read ahead on the client's worker while the caller handles a batch.
                client.client.follow_with(&run.run, options).read_ahead()
            };
            *events = Box::into_raw(Box::new(longrun_events {
                rt: client.rt.clone(),
                stream: Mutex::new(stream),
            }));
            Ok(())
        })
    }
}

/// Wait for the next events of a follow and hand over, in `*batch`, the first one plus every
/// further one already available, up to `max` (at least 1). `batch->next` says what was found:
/// `EVENTS`, `END` (the follow is over), or `PENDING` (`timeout_ms` ≥ 0 passed with nothing
/// new; negative waits without limit). An error is final: the follow is over after it.
/// `INTERRUPTED` and `PENDING` lose nothing; the next call carries on. Calls on one stream are
/// serialized. The caller frees every batch filled with `LONGRUN_CODE_OK` with
/// `longrun_batch_free`. `interrupt` may be NULL.
///
/// # Safety
/// Pointers are NULL, live handles, or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_events_next(
    events: *const longrun_events,
    max: usize,
    timeout_ms: i64,
    interrupt: *const longrun_interrupt,
    batch: *mut longrun_batch,
    err: *mut *mut longrun_error,
) -> longrun_code {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        guard(err, || {
            let events = handle(events, "events")?;
            let batch = out(batch, "batch")?;
            let interrupt = interrupt.as_ref();
            let mut stream = events
                .stream
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let next = stream.next_raw_batch(max.max(1));
            let found = match u64::try_from(timeout_ms) {
                Err(_) => block(&events.rt, interrupt, async { next.await.map(Some) })?,
                Ok(ms) => block(&events.rt, interrupt, async {
                    match tokio::time::timeout(Duration::from_millis(ms), next).await {
                        Ok(result) => result.map(Some),
                        Err(_) => Ok(None),
                    }
                })?,
            };
            *batch = match found {
                None => empty_batch(longrun_next::Pending),
                Some(list) if list.is_empty() => empty_batch(longrun_next::End),
                Some(list) => {
                    let mut data = Box::new(longrun_batch_data {
                        events: Vec::with_capacity(list.len()),
                        values: Vec::with_capacity(list.len() * 32),
                    });
                    for ev in &list {
                        // The value's JSON text as it came: nothing to parse or re-encode.
                        let start = data.values.len();
                        data.values.extend_from_slice(ev.value.get().as_bytes());
                        data.events.push(longrun_event {
                            id: ev.id,
                            state: state_of(ev.state),
                            value_offset: start,
                            value_len: data.values.len() - start,
                        });
                    }
                    longrun_batch {
                        next: longrun_next::Events,
                        events: data.events.as_ptr(),
                        len: data.events.len(),
                        values: data.values.as_ptr(),
                        values_len: data.values.len(),
                        data: Box::into_raw(data),
                    }
                }
            };
            Ok(())
        })
    }
}

fn empty_batch(next: longrun_next) -> longrun_batch {
    longrun_batch {
        next,
        events: std::ptr::null(),
        len: 0,
        values: std::ptr::null(),
        values_len: 0,
        data: std::ptr::null_mut(),
    }
}

/// Free a batch's events and values, and set it to empty. NULL, and an empty or already freed
/// batch, are allowed.
///
/// # Safety
/// `batch` is NULL or points to a batch that is zeroed or was filled by `longrun_events_next`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_batch_free(batch: *mut longrun_batch) {
    // SAFETY: the caller's contract.
    let Some(batch) = (unsafe { batch.as_mut() }) else {
        return;
    };
    if !batch.data.is_null() {
        // SAFETY: made by Box::into_raw in `longrun_events_next`.
        drop(unsafe { Box::from_raw(batch.data) });
    }
    *batch = empty_batch(batch.next);
}

/// Free an event stream (closing its connection). NULL is allowed.
///
/// # Safety
/// `events` is NULL or a stream from this library not yet freed, with no call on it still
/// running; it is invalid afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_events_free(events: *mut longrun_events) {
    // SAFETY: the caller's contract, passed on.
    unsafe { free_on_runtime(events, |e| &e.rt) }
}

// ---------------------------------------------------------------------------------------------
// Byte streams

/// A run's byte stream (spec §27): every byte once, in order, resumed by the core after a
/// disconnect from the count of bytes received.
pub struct longrun_stream {
    rt: Arc<Runtime>,
    stream: Mutex<Option<longrun::ByteStream>>,
}

/// Open a run's byte stream. Nothing is sent until the first `longrun_stream_next`. On
/// success `*stream` is a new stream; free it with `longrun_stream_free`. It does not borrow
/// `client` or `run`.
///
/// # Safety
/// Pointers are NULL, live handles, or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_client_stream(
    client: *const longrun_client,
    run: *const longrun_run,
    stream: *mut *mut longrun_stream,
    err: *mut *mut longrun_error,
) -> longrun_code {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        guard(err, || {
            let client = handle(client, "client")?;
            let run = handle(run, "run")?;
            let stream = out(stream, "stream")?;
            let bytes = client.client.stream(&run.run);
            *stream = Box::into_raw(Box::new(longrun_stream {
                rt: client.rt.clone(),
                stream: Mutex::new(Some(bytes)),
            }));
            Ok(())
        })
    }
}

/// Wait for the next bytes of a stream. `*next` says what was found: `EVENTS` (`*chunk` holds
/// one or more bytes, an owned buffer to free with `longrun_buf_free`), `END` (every byte was
/// read and the run has ended; `*chunk` is empty) or `PENDING` (`timeout_ms` ≥ 0 passed with
/// nothing new; negative waits without limit). A run without a stream is `NOT_FOUND`. An error
/// is final. `INTERRUPTED` and `PENDING` lose nothing. Calls on one stream are serialized.
/// `interrupt` may be NULL.
///
/// # Safety
/// Pointers are NULL, live handles, or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_stream_next(
    stream: *const longrun_stream,
    timeout_ms: i64,
    interrupt: *const longrun_interrupt,
    next: *mut longrun_next,
    chunk: *mut longrun_buf,
    err: *mut *mut longrun_error,
) -> longrun_code {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        guard(err, || {
            let stream = handle(stream, "stream")?;
            let next = out(next, "next")?;
            let chunk = out(chunk, "chunk")?;
            *chunk = buf_of(Vec::new());
            *next = match take_next(&stream.rt, &stream.stream, interrupt.as_ref(), timeout_ms)? {
                Taken::Pending => longrun_next::Pending,
                Taken::End => longrun_next::End,
                Taken::Item(bytes) => {
                    *chunk = buf_of(bytes.to_vec());
                    longrun_next::Events
                }
            };
            Ok(())
        })
    }
}

/// Free a byte stream (closing its connection). NULL is allowed.
///
/// # Safety
/// `stream` is NULL or a stream from this library not yet freed, with no call on it still
/// running; it is invalid afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_stream_free(stream: *mut longrun_stream) {
    // SAFETY: the caller's contract, passed on.
    unsafe { free_on_runtime(stream, |s| &s.rt) }
}

// ---------------------------------------------------------------------------------------------
// Pubsub

/// A subscription to a topic or pattern (spec §28.5): its publications in order, each once,
/// resumed by the core from the next offset after the WebSocket is lost.
pub struct longrun_subscription {
    rt: Arc<Runtime>,
    subscription: Mutex<Option<longrun::Subscription>>,
}

/// Subscribe to `topic` (a dotted name, or a pattern with `*` and `?`), from offset `*since`
/// (NULL: from now; one topic only), and block until the server holds the subscription: every
/// publication after that is delivered. `*offset` is then the topic's next offset (0 for a
/// pattern) and `*recovered` false when `since` asked for publications the server no longer
/// holds. On success `*subscription` is new; free it with `longrun_subscription_free` (which
/// unsubscribes). It does not borrow `client`. `interrupt` may be NULL.
///
/// # Safety
/// Pointers are NULL, live handles, or valid for their lengths / for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_client_subscribe(
    client: *const longrun_client,
    topic: *const u8,
    topic_len: usize,
    since: *const u64,
    interrupt: *const longrun_interrupt,
    subscription: *mut *mut longrun_subscription,
    offset: *mut u64,
    recovered: *mut bool,
    err: *mut *mut longrun_error,
) -> longrun_code {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        guard(err, || {
            let client = handle(client, "client")?;
            let topic = str_arg(topic, topic_len, "topic")?;
            let (out_sub, offset, recovered) = (
                out(subscription, "subscription")?,
                out(offset, "offset")?,
                out(recovered, "recovered")?,
            );
            let mut sub = client.client.subscribe(topic, since.as_ref().copied());
            let acked = block(&client.rt, interrupt.as_ref(), sub.ready());
            let acked = match acked {
                Ok(acked) => acked,
                Err(e) => {
                    // Dropped on the runtime: an unsubscribe goes out on its socket.
                    let _enter = client.rt.enter();
                    drop(sub);
                    return Err(e);
                }
            };
            *offset = acked.offset;
            *recovered = acked.recovered;
            *out_sub = Box::into_raw(Box::new(longrun_subscription {
                rt: client.rt.clone(),
                subscription: Mutex::new(Some(sub)),
            }));
            Ok(())
        })
    }
}

/// Wait for a subscription's next publication. `*next` says what was found: `EVENTS`
/// (`*topic` the topic it was published to, `*data` its JSON, both owned buffers to free with
/// `longrun_buf_free`; `*offset` its offset), `END` (the subscription is over; both empty) or
/// `PENDING` (`timeout_ms` ≥ 0 passed with nothing; negative waits without limit). An error is
/// final. `INTERRUPTED` and `PENDING` lose nothing. Calls on one subscription are serialized.
/// `interrupt` may be NULL.
///
/// # Safety
/// Pointers are NULL, live handles, or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_subscription_next(
    subscription: *const longrun_subscription,
    timeout_ms: i64,
    interrupt: *const longrun_interrupt,
    next: *mut longrun_next,
    topic: *mut longrun_buf,
    offset: *mut u64,
    data: *mut longrun_buf,
    err: *mut *mut longrun_error,
) -> longrun_code {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        guard(err, || {
            let sub = handle(subscription, "subscription")?;
            let (next, topic, offset, data) = (
                out(next, "next")?,
                out(topic, "topic")?,
                out(offset, "offset")?,
                out(data, "data")?,
            );
            *topic = buf_of(Vec::new());
            *data = buf_of(Vec::new());
            *offset = 0;
            let found = take_next(&sub.rt, &sub.subscription, interrupt.as_ref(), timeout_ms)?;
            *next = match found {
                Taken::Pending => longrun_next::Pending,
                Taken::End => longrun_next::End,
                Taken::Item(p) => {
                    *topic = buf_of(p.topic.into_bytes());
                    *offset = p.offset;
                    *data = buf_of(serde_json::to_vec(&p.data).expect("values serialize"));
                    longrun_next::Events
                }
            };
            Ok(())
        })
    }
}

/// Free a subscription, unsubscribing. NULL is allowed.
///
/// # Safety
/// `subscription` is NULL or a subscription from this library not yet freed, with no call on
/// it still running; it is invalid afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_subscription_free(subscription: *mut longrun_subscription) {
    // SAFETY: the caller's contract, passed on.
    unsafe { free_on_runtime(subscription, |s| &s.rt) }
}

/// One page of the runs the client's token sees, newest first (`GET /_runs`). `query` is JSON
/// text of an object with optional `object`, `state`, `limit`, `page_token` (NULL or empty:
/// none), read by the core; `*page` is JSON (free it with `longrun_buf_free`):
/// `{"runs": [{"object", "id", "url", "state", "created", "ended", "tenant"}],
/// "next_page_token"}` (`ended`, `tenant` and `next_page_token` may be null). `interrupt`
/// may be NULL.
///
/// # Safety
/// Pointers are NULL, live handles, or valid for their lengths / for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_client_list_runs(
    client: *const longrun_client,
    query: *const u8,
    query_len: usize,
    interrupt: *const longrun_interrupt,
    page: *mut longrun_buf,
    err: *mut *mut longrun_error,
) -> longrun_code {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        guard(err, || {
            let client = handle(client, "client")?;
            let query = match query.is_null() {
                true => longrun::ListRuns::default(),
                false => longrun::ListRuns::from_json(str_arg(query, query_len, "query")?)?,
            };
            let page = out(page, "page")?;
            let answer = block(
                &client.rt,
                interrupt.as_ref(),
                client.client.list_runs(&query),
            )?;
            let runs: Vec<serde_json::Value> = answer
                .runs
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "object": r.run.object(),
                        "id": r.run.id().to_string(),
                        "url": r.run.url().as_str(),
                        "state": r.state.as_str(),
                        "created": r.created,
                        "ended": r.ended,
                        "tenant": r.tenant,
                    })
                })
                .collect();
            let json = serde_json::json!({"runs": runs, "next_page_token": answer.next_page_token});
            *page = buf_of(json.to_string().into_bytes());
            Ok(())
        })
    }
}

/// The server's objects (`GET /_objects`): `*objects` is a JSON array of `{"name", "kind",
/// "description", "args_schema", "stream"}` (free it with `longrun_buf_free`); with `name`
/// (not NULL), that one object as a JSON object, or `NOT_FOUND`. `interrupt` may be NULL.
///
/// # Safety
/// Pointers are NULL, live handles, or valid for their lengths / for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_client_objects(
    client: *const longrun_client,
    name: *const u8,
    name_len: usize,
    interrupt: *const longrun_interrupt,
    objects: *mut longrun_buf,
    err: *mut *mut longrun_error,
) -> longrun_code {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        guard(err, || {
            let client = handle(client, "client")?;
            let name = match name.is_null() {
                true => None,
                false => Some(str_arg(name, name_len, "name")?),
            };
            let objects = out(objects, "objects")?;
            let json = match name {
                None => serde_json::to_vec(&block(
                    &client.rt,
                    interrupt.as_ref(),
                    client.client.objects(),
                )?),
                Some(name) => serde_json::to_vec(&block(
                    &client.rt,
                    interrupt.as_ref(),
                    client.client.object(name),
                )?),
            }
            .map_err(|e| invalid(e.to_string()))?;
            *objects = buf_of(json);
            Ok(())
        })
    }
}

/// Publish `data` (JSON text) to `topic`; `*offset` is its offset. `interrupt` may be NULL.
///
/// # Safety
/// Pointers are NULL, live handles, or valid for their lengths / for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn longrun_client_publish(
    client: *const longrun_client,
    topic: *const u8,
    topic_len: usize,
    data: *const u8,
    data_len: usize,
    interrupt: *const longrun_interrupt,
    offset: *mut u64,
    err: *mut *mut longrun_error,
) -> longrun_code {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        guard(err, || {
            let client = handle(client, "client")?;
            let topic = str_arg(topic, topic_len, "topic")?;
            let data: serde_json::Value = serde_json::from_str(str_arg(data, data_len, "data")?)
                .map_err(|e| invalid(format!("the data is not valid JSON: {e}")))?;
            let offset = out(offset, "offset")?;
            *offset = block(
                &client.rt,
                interrupt.as_ref(),
                client.client.publish(topic, &data),
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_code_with_the_same_name() {
        let mut seen = std::collections::HashSet::new();
        for kind in ErrorKind::ALL {
            let code = code_of(kind);
            assert!(seen.insert(code as i32), "{kind} shares a code");
            // SAFETY: a static NUL-terminated string.
            let name = unsafe { std::ffi::CStr::from_ptr(longrun_code_name(code as i32)) };
            assert_eq!(name.to_str().unwrap(), kind.as_str());
        }
        let names: Vec<_> = (0..)
            .map(|i| longrun_error_kind_name(i))
            .take_while(|p| !p.is_null())
            // SAFETY: static NUL-terminated strings.
            .map(|p| unsafe { std::ffi::CStr::from_ptr(p) }.to_str().unwrap())
            .collect();
        let kinds: Vec<_> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names, kinds);
    }

    #[test]
    fn a_panic_becomes_a_code_and_a_message() {
        let mut err = std::ptr::null_mut();
        // SAFETY: `err` is writable.
        let code = unsafe { guard(&mut err, || panic!("on purpose")) };
        assert_eq!(code, longrun_code::Panic);
        let mut len = 0;
        // SAFETY: a live error.
        let msg = unsafe { longrun_error_message(err, &mut len) };
        // SAFETY: borrowed from the live error.
        let msg = std::str::from_utf8(unsafe { std::slice::from_raw_parts(msg, len) }).unwrap();
        assert!(msg.contains("on purpose"), "{msg}");
        // SAFETY: freed once.
        unsafe { longrun_error_free(err) };
    }
}
