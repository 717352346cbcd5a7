//! The few runtime services the client needs, behind one seam so the same code runs on tokio
//! (native) and on the browser's timers (wasm32).

use std::future::Future;
use std::time::Duration;

use futures::future::{Either, select};

#[cfg(not(target_arch = "wasm32"))]
pub async fn sleep(d: Duration) {
    tokio::time::sleep(d).await
}

#[cfg(target_arch = "wasm32")]
pub async fn sleep(d: Duration) {
    gloo_timers::future::sleep(d).await
}

/// Run `f` for at most `d`; `None` when the time ran out (and `f` was dropped).
pub async fn timeout<F: Future>(d: Duration, f: F) -> Option<F::Output> {
    let f = std::pin::pin!(f);
    let t = std::pin::pin!(sleep(d));
    match select(f, t).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(_) => None,
    }
}
