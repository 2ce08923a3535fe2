//! Which store the app runs on (`store.backend`), opened, and closed in the way that
//! store needs: sled's data dir must be free again when the app returns (an in-process
//! restart reopens it), PostgreSQL's pool must be closed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::{Settings, StoreBackend};
use crate::secrets::Keyring;
use crate::store::{PgStore, PgStoreConfig, SledStore, SledStoreConfig, Store, StoreError};

/// The opened store, by backend.
#[derive(Clone)]
pub(super) enum OpenedStore {
    /// The embedded sled store.
    Sled(Arc<SledStore>),
    /// The PostgreSQL store.
    Postgres(Arc<PgStore>),
}

impl OpenedStore {
    /// Opens the configured backend. PostgreSQL errors (unreachable, credentials
    /// refused, a schema newer than this binary) are one line, with the database they
    /// are about.
    pub(super) async fn open(settings: &Settings, keyring: Keyring) -> anyhow::Result<OpenedStore> {
        match settings.store.backend {
            StoreBackend::Sled => Ok(OpenedStore::Sled(open_sled(settings, keyring)?)),
            StoreBackend::Postgres => {
                let config = PgStoreConfig::from_settings(&settings.store.postgres);
                let store = tokio::task::spawn_blocking(move || PgStore::open(config, keyring))
                    .await
                    .context("opening the PostgreSQL store")?
                    .context("opening the PostgreSQL store")?;
                Ok(OpenedStore::Postgres(store))
            }
        }
    }

    /// The store as everything else sees it.
    pub(super) fn as_dyn(&self) -> Arc<dyn Store> {
        match self {
            OpenedStore::Sled(store) => store.clone(),
            OpenedStore::Postgres(store) => store.clone(),
        }
    }

    /// Stops taking writes and makes everything written durable.
    pub(super) async fn shutdown(&self) -> Result<(), StoreError> {
        match self {
            OpenedStore::Sled(store) => store.shutdown().await,
            OpenedStore::Postgres(store) => store.shutdown().await,
        }
    }

    /// Re-seals every stored secret not sealed with the current key; how many.
    /// Blocking: run it on a blocking thread.
    pub(super) fn rotate_secrets(&self) -> Result<u64, StoreError> {
        match self {
            OpenedStore::Sled(store) => store.rotate_secrets(),
            OpenedStore::Postgres(store) => store.rotate_secrets(),
        }
    }

    /// Lets go of the store once the app is done with it (see [`release_sled`]).
    pub(super) async fn release(self, within: Duration) {
        match self {
            OpenedStore::Sled(store) => release_sled(store, within).await,
            OpenedStore::Postgres(store) => {
                if let Err(error) = store.shutdown().await {
                    tracing::warn!(%error, "closing the postgresql store failed");
                }
            }
        }
    }
}

/// Opens the sled store in the data dir with `keyring`.
pub(super) fn open_sled(settings: &Settings, keyring: Keyring) -> anyhow::Result<Arc<SledStore>> {
    SledStore::open_with_keyring(
        SledStoreConfig {
            data_dir: settings.store.data_dir.clone(),
            cache_capacity_bytes: settings.store.cache_capacity_bytes,
            group_commit_window: settings.store.group_commit_window,
        },
        keyring,
    )
    .with_context(|| format!("opening the store in {}", settings.store.data_dir.display()))
}

/// Waits, at most `within`, until `store` is its last handle, then drops it: the data
/// dir stays locked until sled's last handle is gone, and a caller that reopens the same
/// data dir right after [`App::run_until_stopped`](super::App::run_until_stopped) (an
/// in-process restart) must find it free. The tasks stopped before this let go of
/// theirs within moments (a blocking store call finishes first); one still running past
/// the bound (a recovery scan of a huge store, say) is logged, and the lock goes with
/// the process.
async fn release_sled(store: Arc<SledStore>, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while Arc::strong_count(&store) > 1 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                handles = Arc::strong_count(&store) - 1,
                "store still referenced after shutdown; its data dir stays locked until they finish"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The group-commit flusher holds the database too: a store dropped without a
    // shutdown lets it run a last flush and exit on its own, keeping the directory
    // locked meanwhile. Stopping it here (a no-op after `shutdown`) makes this drop the
    // database's last handle.
    if let Err(error) = store.shutdown().await {
        tracing::warn!(%error, "final flush at release failed");
    }
    let data_dir = store.data_dir().to_path_buf();
    drop(store);
    // sled itself lets go of the directory a moment later (its last background write).
    let released =
        tokio::task::spawn_blocking(move || crate::store::wait_until_released(&data_dir, within))
            .await
            .unwrap_or(false);
    if !released {
        tracing::warn!("store's data dir still locked after release");
    }
}
