//! The async facade over the store: how async code (request handlers, services, actor
//! handlers, sync tasks) reaches storage without blocking a runtime thread.
//!
//! The record-family traits are synchronous because sled is: its calls are short but
//! can wait on its process-wide lock or on I/O, and a worker thread stuck there stalls
//! every task scheduled on it (on this 2-core machine, half the server). So async code
//! never calls them directly: it hands a closure to [`AsyncStore::run`], which runs it
//! on tokio's blocking pool, the way a pooled connection's `interact` does. One closure
//! may make several calls (a read and the write that depends on it), which also keeps
//! the hop count at one per logical step. [`AsyncStore::durable`] is already async: it
//! waits for the group commit's flusher, which runs on its own thread.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::{Store, StoreError};

/// The store as async code sees it. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct AsyncStore {
    store: Arc<dyn Store>,
}

impl AsyncStore {
    /// The facade over `store`.
    pub fn new(store: Arc<dyn Store>) -> AsyncStore {
        AsyncStore { store }
    }

    /// Runs `work` against the store on the blocking pool and waits for it. A panic in
    /// `work` (a bug) comes back as [`StoreError::Io`] rather than tearing down the
    /// caller.
    pub async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(store.as_ref()))
            .await
            .map_err(|e| StoreError::Io(format!("store task failed: {e}")))?
    }

    /// Resolves once everything written before the call is on disk (group commit: many
    /// callers share one flush).
    pub fn durable(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        self.store.durable()
    }

    /// The synchronous store, for code that already runs on a blocking thread (a
    /// recovery scan, a janitor pass) or must hand it to one.
    pub fn blocking(&self) -> &Arc<dyn Store> {
        &self.store
    }
}

impl std::fmt::Debug for AsyncStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncStore").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::{AccessToken, Account, ProviderKind};
    use crate::store::{SledStore, SledStoreConfig};

    fn open(dir: &tempfile::TempDir) -> AsyncStore {
        let store = SledStore::open(SledStoreConfig {
            data_dir: dir.path().to_path_buf(),
            cache_capacity_bytes: 8 * 1024 * 1024,
            group_commit_window: Duration::ZERO,
        })
        .expect("store opens");
        AsyncStore::new(store)
    }

    // One worker thread: if `run` executed the closure on it, the closure's wait below
    // would hold the only worker and the ticker could never advance.
    #[tokio::test(flavor = "current_thread")]
    async fn run_executes_off_the_runtime_thread_and_returns_the_result() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open(&dir);
        let account = Account::new_linked(
            ProviderKind::Plaid,
            "item-1".into(),
            AccessToken::new("token"),
            "owner-1".into(),
            vec!["ada@example.com".into()],
            chrono::Utc::now(),
        );
        let record = account.clone();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let linked = store.run(move |s| {
            // Blocks until the runtime thread, still free, says it ran.
            rx.recv().map_err(|e| StoreError::Io(e.to_string()))?;
            s.link_account(&record)
        });
        let ticker = async move {
            tokio::task::yield_now().await;
            tx.send(()).expect("closure waits");
        };
        let (linked, ()) = tokio::join!(linked, ticker);
        linked.expect("links");
        store.durable().await.expect("durable");
        let id = account.id.clone();
        let found = store.run(move |s| s.get_account(&id)).await.expect("reads");
        assert_eq!(found.map(|a| a.item_id), Some("item-1".to_string()));
    }

    #[tokio::test]
    async fn a_panicking_closure_is_an_error_not_a_crash() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open(&dir);
        let result: Result<(), StoreError> = store.run(|_| panic!("bug in a store closure")).await;
        assert!(matches!(result, Err(StoreError::Io(_))), "{result:?}");
    }
}
