//! Stage threads: named, optionally pinned, supervised so that a panic stops the engine
//! loudly instead of hanging it; and the wait strategies stages use on their input.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, bounded};
use parking_lot::Mutex;

use crate::config::WaitStrategy;

/// A stage that died, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageFailure {
    pub stage: String,
    pub message: String,
}

impl std::fmt::Display for StageFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stage {} panicked: {}", self.stage, self.message)
    }
}

struct Inner {
    failure: Mutex<Option<StageFailure>>,
    failed: AtomicBool,
    signal_tx: Sender<()>,
    signal_rx: Receiver<()>,
}

/// Spawns stage threads and records the first one that panics.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        let (signal_tx, signal_rx) = bounded(1);
        Supervisor {
            inner: Arc::new(Inner {
                failure: Mutex::new(None),
                failed: AtomicBool::new(false),
                signal_tx,
                signal_rx,
            }),
        }
    }

    /// Spawns `f` on a thread called `name`, pinned to `core` when given.
    pub fn spawn<F>(
        &self,
        name: String,
        core: Option<usize>,
        f: F,
    ) -> std::io::Result<JoinHandle<()>>
    where
        F: FnOnce() + Send + 'static,
    {
        let sup = self.clone();
        let stage = name.clone();
        std::thread::Builder::new().name(name).spawn(move || {
            if let Some(id) = core
                && !core_affinity::set_for_current(core_affinity::CoreId { id })
            {
                crate::warn!("could not pin {stage} to core {id}");
            }
            if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
                sup.fail(&stage, panic_message(payload.as_ref()));
            }
        })
    }

    fn fail(&self, stage: &str, message: String) {
        crate::error!("stage {stage} panicked: {message}; stopping the engine");
        let mut f = self.inner.failure.lock();
        if f.is_none() {
            *f = Some(StageFailure {
                stage: stage.to_owned(),
                message,
            });
        }
        self.inner.failed.store(true, Ordering::SeqCst);
        let _ = self.inner.signal_tx.try_send(());
    }

    /// The first failure, if any stage panicked.
    pub fn failure(&self) -> Option<StageFailure> {
        self.inner.failure.lock().clone()
    }

    pub fn has_failed(&self) -> bool {
        self.inner.failed.load(Ordering::SeqCst)
    }

    /// Becomes ready when a stage panics (use it in `select!`).
    pub fn failure_signal(&self) -> Receiver<()> {
        self.inner.signal_rx.clone()
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

/// The outcome of waiting on a stage's input.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv<T> {
    Item(T),
    /// The deadline passed.
    Timeout,
    /// Every sender is gone and the queue is empty.
    Closed,
}

/// Waits for the next item until `deadline` with the configured strategy.
#[inline]
pub fn recv_until<T>(rx: &Receiver<T>, deadline: Instant, wait: WaitStrategy) -> Recv<T> {
    match wait {
        WaitStrategy::Block => match rx.recv_deadline(deadline) {
            Ok(v) => Recv::Item(v),
            Err(RecvTimeoutError::Timeout) => Recv::Timeout,
            Err(RecvTimeoutError::Disconnected) => Recv::Closed,
        },
        WaitStrategy::Spin => loop {
            match rx.try_recv() {
                Ok(v) => return Recv::Item(v),
                Err(TryRecvError::Disconnected) => return Recv::Closed,
                Err(TryRecvError::Empty) => {
                    if Instant::now() >= deadline {
                        return Recv::Timeout;
                    }
                    std::hint::spin_loop();
                }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_stage_is_reported() {
        let sup = Supervisor::new();
        let h = sup
            .spawn("meltica-test".into(), None, || panic!("boom"))
            .unwrap();
        h.join().unwrap();
        sup.failure_signal().recv().unwrap();
        let f = sup.failure().unwrap();
        assert_eq!(f.stage, "meltica-test");
        assert_eq!(f.message, "boom");
    }
}
