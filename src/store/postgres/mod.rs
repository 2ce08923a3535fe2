//! The PostgreSQL implementation of [`Store`](super::Store): SQL tables users can query
//! (the schema is `migrations/`, applied at open), the same guarantees as sled.
//!
//! This file owns [`PgStore`] itself: opening (connect, check, migrate), the bridge
//! from the synchronous store traits to sqlx, transactions with bounded retries, and
//! durability. Each record family implements its trait in its own file, as in
//! `store/sled/`: `accounts.rs`, `inbox.rs` (with the ingest batcher), `rows.rs`,
//! `due.rs`, `incidents.rs`, `outbox.rs`, `flags.rs`, `operations.rs`; `sealing.rs` seals
//! access tokens.
//!
//! Choices that differ from sled, and why:
//! - Every write commits before its method returns (`synchronous_commit` is on for
//!   acctor's sessions), so [`Durability::durable`] has nothing left to wait for. The
//!   hot path shares commits anyway: webhook ingest goes through one batcher that
//!   writes every webhook waiting at the time in one transaction (`inbox.rs`).
//! - The traits are synchronous (sled is); sqlx is async. The store runs its own small
//!   tokio runtime and its methods `block_on` it: callers already run store work on
//!   blocking threads (the [`AsyncStore`](super::AsyncStore) facade), and a runtime of
//!   its own keeps the pool's timers and connections off the caller's runtime (a test
//!   with a paused clock, or an app shutting its runtime down).
//! - Concurrency is the database's: row locks (`FOR UPDATE` on the account) where sled
//!   takes its per-account staging lock, advisory locks per provider item where a link
//!   and an ingest must see each other's writes, unique indexes for at most one linked
//!   account per item, one live alias, one open incident per (account, kind). A
//!   transaction that fails on a serialization failure or a deadlock runs again, a
//!   bounded number of times.

mod accounts;
mod due;
mod flags;
mod inbox;
mod incidents;
mod objects;
mod operations;
mod outbox;
mod pushes;
mod rows;
mod sealing;

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use super::{Durability, StoreError};
use crate::secrets::Keyring;
use sealing::TokenSealer;

/// The migrations in `migrations/`, embedded in the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How many times a transaction runs when it keeps failing on a serialization failure
/// or a deadlock, before the error is surfaced.
const TRANSACTION_ATTEMPTS: u32 = 5;

/// Where and how to open the PostgreSQL store.
#[derive(Clone)]
pub struct PgStoreConfig {
    /// `postgres://user:password@host:port/database`.
    pub url: SecretString,
    /// The schema holding acctor's tables (created if missing).
    pub schema: String,
    /// Connections in the pool.
    pub pool_size: u32,
    /// Longest a statement may run.
    pub statement_timeout: Duration,
    /// Longest wait to connect or for a free connection.
    pub connect_timeout: Duration,
}

impl fmt::Debug for PgStoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStoreConfig")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl PgStoreConfig {
    /// The settings' PostgreSQL section.
    pub fn from_settings(settings: &crate::config::PostgresSettings) -> PgStoreConfig {
        PgStoreConfig {
            url: settings.url.clone(),
            schema: settings.schema.clone(),
            pool_size: settings.pool_size,
            statement_timeout: settings.statement_timeout,
            connect_timeout: settings.connect_timeout,
        }
    }
}

/// The PostgreSQL-backed [`Store`](super::Store). Open with [`PgStore::open`]; stop
/// with [`PgStore::shutdown`], after which writes answer [`StoreError::Closed`].
pub struct PgStore {
    pool: PgPool,
    /// The store's own runtime (see the module docs); `None` once dropped.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    sealer: TokenSealer,
    /// Hands webhooks to the batcher, which commits them together.
    ingest: inbox::IngestQueue,
    /// `true` once closed; writers hold a read guard for the whole write.
    closed: RwLock<bool>,
    schema: String,
    /// Transactions run again after a serialization failure or a deadlock (shared
    /// with the ingest batchers, whose transactions count here too).
    conflicts: Arc<std::sync::atomic::AtomicU64>,
    /// The inbox's depth, kept up to date by this process's writes and recounted now
    /// and then (see `inbox.rs`).
    depth: inbox::DepthCache,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.schema)
            .field("connections", &self.pool.size())
            .finish_non_exhaustive()
    }
}

/// What failed inside a transaction: worth running it again (a serialization failure,
/// a deadlock), or not.
pub(super) enum TxError {
    Retry(sqlx::Error),
    Fail(StoreError),
}

impl From<sqlx::Error> for TxError {
    fn from(error: sqlx::Error) -> TxError {
        if is_retryable(&error) {
            TxError::Retry(error)
        } else {
            TxError::Fail(db_error(error))
        }
    }
}

impl From<StoreError> for TxError {
    fn from(error: StoreError) -> TxError {
        TxError::Fail(error)
    }
}

/// The result type of a transaction body.
pub(super) type TxResult<T> = Result<T, TxError>;

/// A transaction of the store's pool.
pub(super) type Tx = sqlx::Transaction<'static, Postgres>;

/// Serialization failures and deadlocks: the transaction did nothing, running it again
/// may succeed.
fn is_retryable(error: &sqlx::Error) -> bool {
    matches!(
        error.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("40001") | Some("40P01")
    )
}

/// A database error as the store reports it. Connection trouble says so, which is what
/// an operator reading a 503's log line needs first.
pub(super) fn db_error(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::PoolTimedOut => StoreError::Io(
            "database unavailable: no connection within store.postgres.connect_timeout".into(),
        ),
        sqlx::Error::Io(e) => StoreError::Io(format!("database unavailable: {e}")),
        sqlx::Error::PoolClosed => StoreError::Closed,
        _ => StoreError::Io(format!("database error: {error}")),
    }
}

/// A record that does not decode.
pub(super) fn corrupt(table: &'static str, detail: impl fmt::Display) -> StoreError {
    StoreError::Corrupt {
        tree: table,
        detail: detail.to_string(),
    }
}

/// `at` to the millisecond, as the due index keeps times (sled's keys hold millis).
pub(super) fn to_millis(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(at.timestamp_millis().max(0)).unwrap_or(at)
}

/// Runs a transaction body, committing on success and running it again (at most
/// [`TRANSACTION_ATTEMPTS`] times) after a serialization failure or a deadlock.
/// `$tx` is a `&mut Tx` inside `$body`, which evaluates to a `TxResult`.
macro_rules! transaction {
    ($store:expr, |$tx:ident| $body:expr) => {{
        let mut attempt = 1u32;
        loop {
            let mut owned_tx = match $store.pool.begin().await {
                Ok(tx) => tx,
                Err(error) => break Err($crate::store::postgres::db_error(error)),
            };
            let outcome: $crate::store::postgres::TxResult<_> = {
                let $tx = &mut owned_tx;
                $body
            };
            let outcome = match outcome {
                Ok(value) => owned_tx
                    .commit()
                    .await
                    .map(|()| value)
                    .map_err($crate::store::postgres::TxError::from),
                Err(error) => Err(error),
            };
            match outcome {
                Ok(value) => break Ok(value),
                Err($crate::store::postgres::TxError::Fail(error)) => break Err(error),
                Err($crate::store::postgres::TxError::Retry(error)) => {
                    if attempt >= $crate::store::postgres::TRANSACTION_ATTEMPTS {
                        break Err($crate::store::StoreError::Io(format!(
                            "database error after {attempt} attempts: {error}"
                        )));
                    }
                    tracing::debug!(attempt, %error, "transaction conflicted; running it again");
                    $store.conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    attempt += 1;
                }
            }
        }
    }};
}
pub(super) use transaction;

impl PgStore {
    /// Connects, checks the database, creates the schema if missing and applies the
    /// migrations (idempotent; several processes starting at once take turns), then
    /// starts the ingest batcher. Errors are one line each: the database unreachable,
    /// the credentials refused, a schema written by a newer acctor, a keyring lacking a
    /// key the stored secrets need. Blocking: call it from a blocking thread or outside
    /// any runtime.
    pub fn open(config: PgStoreConfig, keyring: Keyring) -> Result<Arc<PgStore>, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("acctor-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io(format!("starting the database runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let pool = handle.block_on(connect(&config))?;
        let sealer = TokenSealer::new(keyring);
        handle.block_on(sealer.check_keys(&pool))?;
        let conflicts = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let ingest = inbox::IngestQueue::start(&handle, pool.clone(), conflicts.clone());
        tracing::info!(schema = %config.schema, pool_size = config.pool_size, "store opened on postgresql");
        Ok(Arc::new(PgStore {
            pool,
            runtime: Some(runtime),
            handle,
            sealer,
            ingest,
            closed: RwLock::new(false),
            schema: config.schema,
            conflicts,
            depth: inbox::DepthCache::default(),
        }))
    }

    /// Stops taking writes, waits for in-flight ones, and closes the pool. Afterwards
    /// writes answer `Closed`. Idempotent.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        let was_open = {
            let mut closed = self.closed.write().unwrap_or_else(|p| p.into_inner());
            !std::mem::replace(&mut *closed, true)
        };
        if was_open {
            self.ingest.stop();
            let pool = self.pool.clone();
            // The pool's connections live on the store's runtime: close them there.
            let _ = self.handle.spawn(async move { pool.close().await }).await;
            tracing::info!(schema = %self.schema, "store closed");
        }
        Ok(())
    }

    /// Webhooks ingested so far and the batch transactions that committed them (their
    /// ratio is how many webhooks share a commit).
    pub fn ingest_counts(&self) -> (u64, u64) {
        (self.ingest.submitted(), self.ingest.batches())
    }

    /// Transactions run again so far after a serialization failure or a deadlock.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Admits one write, or `Closed`. Hold the guard until the write is done.
    fn write_gate(&self) -> Result<std::sync::RwLockReadGuard<'_, bool>, StoreError> {
        let guard = self.closed.read().unwrap_or_else(|p| p.into_inner());
        if *guard {
            return Err(StoreError::Closed);
        }
        Ok(guard)
    }

    /// Runs `work` on the store's runtime and waits for it. The store's methods are
    /// synchronous (the traits are): they are called on blocking threads, never on a
    /// runtime's worker.
    fn block_on<T>(
        &self,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.handle.block_on(work)
    }

    /// [`PgStore::block_on`] for a write: refused once the store is closed.
    fn write<T>(&self, work: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let _gate = self.write_gate()?;
        self.handle.block_on(work)
    }
}

/// Connects with acctor's session settings, creates the schema and migrates.
async fn connect(config: &PgStoreConfig) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(config.url.expose_secret())
        .map_err(|e| StoreError::Io(format!("store.postgres.url is not a PostgreSQL URL: {e}")))?;
    let statement_timeout = config.statement_timeout.as_millis().to_string();
    let options = options.application_name("acctor").options([
        ("search_path", config.schema.as_str()),
        // A commit is on disk before it returns, whatever the database's default:
        // acctor acknowledges webhooks on the strength of it.
        ("synchronous_commit", "on"),
        ("statement_timeout", statement_timeout.as_str()),
    ]);
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    );
    // One connection first, for its error: the pool retries refused connections until
    // its timeout and then reports only that it timed out.
    let cannot_connect = |reason: String| {
        StoreError::Io(format!(
            "cannot connect to PostgreSQL at {target}: {reason}"
        ))
    };
    match tokio::time::timeout(
        config.connect_timeout,
        <sqlx::PgConnection as sqlx::Connection>::connect_with(&options),
    )
    .await
    {
        Err(_) => {
            return Err(cannot_connect(format!(
                "no answer within store.postgres.connect_timeout ({:?})",
                config.connect_timeout
            )))
        }
        Ok(Err(error)) => return Err(cannot_connect(connect_failure(&error))),
        Ok(Ok(connection)) => {
            let _ = sqlx::Connection::close(connection).await;
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(config.pool_size)
        .acquire_timeout(config.connect_timeout)
        .connect_with(options)
        .await
        .map_err(|e| {
            StoreError::Io(format!(
                "cannot connect to PostgreSQL at {target}: {}",
                connect_failure(&e)
            ))
        })?;
    // Created only when missing: a role that owns a schema made for it by an
    // administrator needs no CREATE privilege on the database.
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_namespace WHERE nspname = $1")
        .bind(&config.schema)
        .fetch_optional(&pool)
        .await
        .map_err(|e| {
            StoreError::Io(format!(
                "reading schema {}: {}",
                config.schema,
                connect_failure(&e)
            ))
        })?;
    if exists.is_none() {
        // The schema's name was validated (lowercase letters, digits, underscores).
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {}", config.schema))
            .execute(&pool)
            .await
            .map_err(|e| {
                StoreError::Io(format!(
                    "creating schema {} (create it for acctor's role, or grant that role CREATE on the database): {}",
                    config.schema,
                    connect_failure(&e)
                ))
            })?;
    }
    MIGRATOR
        .run(&pool)
        .await
        .map_err(|e| migrate_failure(&config.schema, e))?;
    Ok(pool)
}

/// Why a connection failed, in the words an operator acts on.
fn connect_failure(error: &sqlx::Error) -> String {
    match error.as_database_error().and_then(|e| e.code()).as_deref() {
        Some("28P01") | Some("28000") => format!("credentials refused ({error})"),
        Some("3D000") => format!("no such database ({error})"),
        Some("42501") => format!("permission denied ({error})"),
        _ => match error {
            sqlx::Error::PoolTimedOut => "timed out (store.postgres.connect_timeout)".into(),
            other => other.to_string(),
        },
    }
}

/// A migration failure, saying when the database is ahead of this binary.
fn migrate_failure(schema: &str, error: sqlx::migrate::MigrateError) -> StoreError {
    use sqlx::migrate::MigrateError;
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    match error {
        MigrateError::VersionMissing(version) => StoreError::Io(format!(
            "schema {schema} was migrated by a newer acctor (migration {version}; this binary knows up to {latest}): run the newer version, or restore a backup"
        )),
        MigrateError::VersionMismatch(version) => StoreError::Io(format!(
            "schema {schema}: migration {version} differs from this binary's (edited after it was applied?)"
        )),
        MigrateError::Dirty(version) => StoreError::Io(format!(
            "schema {schema}: migration {version} failed part way earlier; fix it by hand, then start again"
        )),
        other => StoreError::Io(format!("migrating schema {schema}: {other}")),
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.ingest.stop();
        // Dropping a runtime blocks; this one may be dropped on a runtime thread.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Durability for PgStore {
    fn durable(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        // Every write committed (synchronously) before its method returned.
        Box::pin(async { Ok(()) })
    }

    fn write_probe(&self) -> Result<(), StoreError> {
        self.write(async {
            sqlx::query(
                "INSERT INTO readiness_probe (id, at) VALUES (1, now()) \
                 ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at",
            )
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests;
