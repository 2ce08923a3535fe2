//! Group commit: many writers share one flush + fsync.
//!
//! A webhook may only be acknowledged once it is on disk, and an fsync costs
//! milliseconds. Instead of every writer paying for its own, writers register a waiter
//! and wake the single flusher task; each round takes every waiter registered so far,
//! runs the flush function once on a blocking thread and answers all of them with the
//! same result. Waiters that arrive during a round are served by the next one, so a
//! waiter is always answered by a flush that *started* after it registered.
//!
//! There is exactly one flusher because sled 0.34.7's concurrent `flush_async` calls can
//! deadlock; the flush function itself is supplied by the store, which keeps this module
//! free of sled types and testable with a fake.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use crate::store::StoreError;

/// Makes everything written so far durable. Runs on a blocking thread.
pub(super) type FlushFn = Arc<dyn Fn() -> Result<(), StoreError> + Send + Sync>;

type Waiter = oneshot::Sender<Result<(), StoreError>>;

/// The result of one round in a form every waiter can get a copy of.
#[derive(Clone, Debug)]
enum RoundResult {
    Ok,
    Closed,
    Io(String),
}

impl RoundResult {
    fn from_store(result: Result<(), StoreError>) -> Self {
        match result {
            Ok(()) => RoundResult::Ok,
            Err(StoreError::Closed) => RoundResult::Closed,
            Err(other) => RoundResult::Io(other.to_string()),
        }
    }

    fn to_store(&self) -> Result<(), StoreError> {
        match self {
            RoundResult::Ok => Ok(()),
            RoundResult::Closed => Err(StoreError::Closed),
            RoundResult::Io(message) => Err(StoreError::Io(message.clone())),
        }
    }
}

#[derive(Default)]
struct State {
    waiters: Vec<Waiter>,
    stopping: bool,
    /// Set once the last round after `stop` is done; later waiters get it directly.
    final_result: Option<RoundResult>,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    rounds: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock is never held across a panic-prone call, and a poisoned Vec of
        // senders is still valid, so recover rather than propagate poisoning.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The single flusher task and the waiters it serves.
pub(super) struct GroupCommit {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl GroupCommit {
    /// Spawns the flusher on the current tokio runtime.
    pub(super) fn start(
        runtime: &tokio::runtime::Handle,
        flush: FlushFn,
        window: Duration,
    ) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            rounds: AtomicU64::new(0),
        });
        let task = runtime.spawn(run_flusher(Arc::clone(&shared), flush, window));
        GroupCommit {
            shared,
            task: Mutex::new(Some(task)),
        }
    }

    /// Resolves once a flush that started after this call has finished. The waiter is
    /// registered now, not when the future is first polled.
    pub(super) fn wait(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.shared.lock();
            if let Some(result) = &state.final_result {
                return futures::future::ready(result.to_store()).boxed();
            }
            state.waiters.push(tx);
        }
        self.shared.wake.notify_one();
        async move {
            // The flusher answers every waiter it takes; a dropped sender means the
            // task is gone (runtime shutting down), which is the store closing.
            rx.await.unwrap_or(Err(StoreError::Closed))
        }
        .boxed()
    }

    /// Physical flush rounds done so far.
    pub(super) fn rounds(&self) -> u64 {
        self.shared.rounds.load(Ordering::Relaxed)
    }

    /// Asks the flusher to serve everyone, run one last flush and exit, without waiting.
    pub(super) fn request_stop(&self) {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_one();
    }

    /// Stops the flusher after a final flush and waits for it; returns the final
    /// flush's result. Calling it again returns the same result.
    pub(super) async fn stop(&self) -> Result<(), StoreError> {
        self.request_stop();
        let task = self
            .task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                return Err(StoreError::Io(format!("flusher task failed: {e}")));
            }
        }
        match &self.shared.lock().final_result {
            Some(result) => result.to_store(),
            None => Err(StoreError::Closed),
        }
    }
}

async fn run_flusher(shared: Arc<Shared>, flush: FlushFn, window: Duration) {
    // Whether the last round served several writers: under load, waiting `window` for
    // more of them makes rounds fewer and larger, which is what bounds throughput (each
    // round costs a device flush); a lone writer on a quiet store is flushed at once.
    let mut busy = false;
    loop {
        if busy && !window.is_zero() {
            let (pending, stopping) = {
                let state = shared.lock();
                (!state.waiters.is_empty(), state.stopping)
            };
            if pending && !stopping {
                tokio::time::sleep(window).await;
            }
        }
        let (batch, stopping) = {
            let mut state = shared.lock();
            (std::mem::take(&mut state.waiters), state.stopping)
        };
        if batch.is_empty() && !stopping {
            // notify_one keeps a permit if nobody is waiting yet, so a waiter that
            // registered after the take above is not missed.
            shared.wake.notified().await;
            continue;
        }

        busy = batch.len() > 1;
        let flush = Arc::clone(&flush);
        let result = match tokio::task::spawn_blocking(move || flush()).await {
            Ok(result) => RoundResult::from_store(result),
            Err(e) => RoundResult::Io(format!("flush thread failed: {e}")),
        };
        shared.rounds.fetch_add(1, Ordering::Relaxed);
        if let RoundResult::Io(message) = &result {
            tracing::error!(error = %message, waiters = batch.len(), "store flush failed");
        }
        for waiter in batch {
            // A caller that stopped waiting dropped its receiver; nothing to do.
            let _ = waiter.send(result.to_store());
        }

        if stopping {
            // Everything written before `stop` was requested is covered by this round
            // (the store stops taking writes first), so late waiters share its result.
            let late = {
                let mut state = shared.lock();
                state.final_result = Some(result.clone());
                std::mem::take(&mut state.waiters)
            };
            for waiter in late {
                let _ = waiter.send(result.to_store());
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn counting_flush(calls: Arc<AtomicU64>, fail: Arc<AtomicBool>) -> FlushFn {
        Arc::new(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            // Give concurrent waiters time to pile up behind a round, like a real fsync.
            std::thread::sleep(std::time::Duration::from_millis(2));
            if fail.load(Ordering::SeqCst) {
                Err(StoreError::Io("disk on fire".into()))
            } else {
                Ok(())
            }
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_waiters_share_rounds() {
        let calls = Arc::new(AtomicU64::new(0));
        let group = Arc::new(GroupCommit::start(
            &tokio::runtime::Handle::current(),
            counting_flush(Arc::clone(&calls), Arc::new(AtomicBool::new(false))),
            Duration::ZERO,
        ));
        let waits: Vec<_> = (0..100).map(|_| group.wait()).collect();
        for result in futures::future::join_all(waits).await {
            result.unwrap();
        }
        let rounds = group.rounds();
        assert!((1..100).contains(&rounds), "rounds = {rounds}");
        assert_eq!(rounds, calls.load(Ordering::SeqCst));
        group.stop().await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_flush_reaches_every_waiter_of_its_round() {
        let fail = Arc::new(AtomicBool::new(true));
        let group = GroupCommit::start(
            &tokio::runtime::Handle::current(),
            counting_flush(Arc::new(AtomicU64::new(0)), Arc::clone(&fail)),
            Duration::ZERO,
        );
        let (a, b) = tokio::join!(group.wait(), group.wait());
        assert!(matches!(a, Err(StoreError::Io(ref m)) if m.contains("disk on fire")));
        assert!(matches!(b, Err(StoreError::Io(_))));

        fail.store(false, Ordering::SeqCst);
        group.wait().await.unwrap();
        group.stop().await.unwrap();
    }

    #[tokio::test]
    async fn stop_runs_a_final_flush_and_later_waiters_get_its_result() {
        let calls = Arc::new(AtomicU64::new(0));
        let group = GroupCommit::start(
            &tokio::runtime::Handle::current(),
            counting_flush(Arc::clone(&calls), Arc::new(AtomicBool::new(false))),
            Duration::ZERO,
        );
        group.stop().await.unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "stop flushes once even with no waiters"
        );
        group.wait().await.unwrap();
        group.stop().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
