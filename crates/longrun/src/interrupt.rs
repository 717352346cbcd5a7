//! Stopping a call from outside it: what every binding needs to turn its language's
//! cancellation (a Go context, a JS `AbortSignal`) into the end of a blocked call. One
//! primitive in the core, so the bindings only translate.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use futures::FutureExt;
use futures::channel::oneshot;
use futures::future::{Either, Shared, select};

/// A signal that stays raised once raised. Clones share it; raising it from any thread ends
/// every call run under it ([`Interrupt::run`]) promptly. Runtime-agnostic (no tokio), so the
/// same type serves native and `wasm32` bindings.
#[derive(Clone)]
pub struct Interrupt {
    inner: Arc<Inner>,
}

struct Inner {
    /// Dropped to raise: every clone of `raised` completes then.
    trigger: Mutex<Option<oneshot::Sender<()>>>,
    raised: Shared<oneshot::Receiver<()>>,
}

impl Default for Interrupt {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interrupt")
            .field("raised", &self.is_raised())
            .finish()
    }
}

impl Interrupt {
    pub fn new() -> Self {
        let (tx, rx) = oneshot::channel();
        Interrupt {
            inner: Arc::new(Inner {
                trigger: Mutex::new(Some(tx)),
                raised: rx.shared(),
            }),
        }
    }

    /// Raise it. Any number of times, from any thread.
    pub fn raise(&self) {
        let sender = self
            .inner
            .trigger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(sender);
    }

    pub fn is_raised(&self) -> bool {
        self.inner
            .trigger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }

    /// Run `call` until it ends or the interrupt is raised, whichever comes first; `None` when
    /// the interrupt won (the call is dropped then: every call of this crate is cancel-safe in
    /// that it loses nothing a later call could have had). Already raised: `None` at once,
    /// without starting `call`.
    pub async fn run<T>(&self, call: impl Future<Output = T>) -> Option<T> {
        if self.is_raised() {
            return None;
        }
        let call = std::pin::pin!(call);
        match select(call, self.inner.raised.clone()).await {
            Either::Left((out, _)) => Some(out),
            Either::Right(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_raised_interrupt_ends_a_pending_call_and_every_later_one() {
        {
            let interrupt = Interrupt::new();
            assert_eq!(interrupt.run(async { 1 }).await, Some(1));
            let other = interrupt.clone();
            let raiser = std::thread::spawn(move || other.raise());
            // Pending forever: only the interrupt can end it.
            assert_eq!(interrupt.run(futures::future::pending::<()>()).await, None);
            raiser.join().unwrap();
            assert!(interrupt.is_raised());
            let mut started = false;
            let call = async {
                started = true;
            };
            assert_eq!(interrupt.run(call).await, None);
            assert!(!started, "a call under a raised interrupt does not start");
            interrupt.raise();
            assert!(interrupt.is_raised());
        }
    }
}
