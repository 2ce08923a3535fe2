//! The store contract suite: every behaviour the traits in `store/mod.rs` promise,
//! written once against `&dyn Store` and run against every backend, so a second
//! implementation is held to exactly what the first one is.
//!
//! A contract test is a plain synchronous `fn behaviour(f: &mut Fixture)`, never an
//! async one: a backend may run its own runtime inside its synchronous methods (the
//! PostgreSQL store does), and those must not be called from inside another runtime.
//! The fixture owns the runtime the sled store's flusher needs and blocks on
//! `durable()` with it. [`contract_tests!`] turns each listed function into a module
//! with one `#[test]` per backend; [`Backend`] and [`open`] are the one place that
//! knows how to open each backend.

use std::sync::Arc;

use tempfile::TempDir;

use super::{PgStore, PgStoreConfig, SledStore, SledStoreConfig, Store};
use crate::testing::{PgServer, TestDatabase};

mod builders;

mod accounts;
mod due;
mod durability;
mod flags;
mod inbox;
mod incidents;
mod objects;
mod operations;
mod outbox;
mod polls;
mod pushes;
mod rows;

pub(crate) use builders::*;

/// The store implementations the contract runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// [`SledStore`], in a fresh temp directory.
    Sled,
    /// [`PgStore`], in a fresh database of the process's throwaway PostgreSQL server.
    Postgres,
}

/// Where one fixture's store keeps its data, the same for every reopen: a fresh
/// directory (sled's data dir lives under it) and a name unique to the fixture (for a
/// backend that keeps its data elsewhere, e.g. a database or schema of its own).
pub(crate) struct Place {
    /// Removed with the fixture.
    dir: TempDir,
    /// Unique per fixture; derived from the directory's name.
    name: String,
    /// The PostgreSQL backend's database, created with the place.
    database: Option<TestDatabase>,
}

impl Place {
    fn fresh(backend: Backend) -> Place {
        let dir = TempDir::new().expect("temp dir");
        let name = dir
            .path()
            .file_name()
            .expect("a temp dir has a name")
            .to_string_lossy()
            .to_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        let database = (backend == Backend::Postgres).then(|| {
            PgServer::shared()
                .and_then(|server| server.create_database())
                .unwrap_or_else(|error| panic!("throwaway PostgreSQL: {error}"))
        });
        Place {
            dir,
            name,
            database,
        }
    }

    /// The fixture's unique name (for a backend that needs one, e.g. a schema).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

/// Opens `backend`'s store on `place`: a new one the first time, the same data on every
/// later call. The only per-backend code of the suite: a backend is one arm here and
/// one line in [`contract_tests!`].
pub(crate) fn open(
    backend: Backend,
    place: &Place,
    rt: &tokio::runtime::Runtime,
) -> Arc<dyn Store> {
    // Opening may start background tasks (sled's group-commit flusher) on the runtime;
    // nothing else in a contract test runs inside it.
    let _entered = rt.enter();
    match backend {
        Backend::Sled => {
            let data_dir = place.dir.path().join("data");
            // A store dropped a moment ago holds sled's lock until its last background
            // write ends: wait for it instead of failing now and then.
            let store: Arc<SledStore> = super::when_released(&data_dir, || {
                SledStore::open(SledStoreConfig {
                    data_dir: data_dir.clone(),
                    cache_capacity_bytes: 16 * 1024 * 1024,
                    group_commit_window: std::time::Duration::ZERO,
                })
            });
            store
        }
        Backend::Postgres => {
            let database = place
                .database
                .as_ref()
                .expect("a postgres place has a database");
            let store: Arc<PgStore> = PgStore::open(
                PgStoreConfig {
                    url: secrecy::SecretString::from(database.url.clone()),
                    schema: "acctor".into(),
                    pool_size: 8,
                    statement_timeout: std::time::Duration::from_secs(30),
                    connect_timeout: std::time::Duration::from_secs(10),
                },
                test_keyring(),
            )
            .unwrap_or_else(|error| {
                panic!("opening the postgres store of {}: {error}", place.name())
            });
            store
        }
    }
}

/// The key sealing secrets in contract tests' stores.
fn test_keyring() -> crate::secrets::Keyring {
    crate::secrets::Keyring::from_specs(&["contract:KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio="])
        .expect("test key")
}

/// One contract test's world: a runtime, a store on a place of its own, and the way to
/// reopen that store on the same data.
pub(crate) struct Fixture {
    // Declared first so it is dropped before the runtime its flusher runs on.
    store: Option<Arc<dyn Store>>,
    rt: tokio::runtime::Runtime,
    backend: Backend,
    place: Place,
}

impl Fixture {
    /// A fresh, empty store of `backend`.
    pub(crate) fn new(backend: Backend) -> Fixture {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let place = Place::fresh(backend);
        let store = open(backend, &place, &rt);
        Fixture {
            store: Some(store),
            rt,
            backend,
            place,
        }
    }

    /// The store under test (an `Arc`, so a test can hand clones to its threads; they
    /// must be gone before [`Fixture::reopen`]).
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        self.store.as_ref().expect("the store is open")
    }

    /// Blocks until everything written so far is durable (`Durability::durable`).
    pub(crate) fn durable(&self) {
        let durable = self.store().durable();
        self.rt.block_on(durable).expect("durable");
    }

    /// Drops the store and opens the same storage again: what a restart sees. Only
    /// what a `durable()` covered is promised to be there.
    pub(crate) fn reopen(&mut self) {
        let store = self.store.take().expect("the store is open");
        assert_eq!(
            Arc::strong_count(&store),
            1,
            "a clone of the store outlives the reopen"
        );
        drop(store);
        self.store = Some(open(self.backend, &self.place, &self.rt));
    }
}

/// Runs one contract test on a fresh fixture of `backend`.
pub(crate) fn run(backend: Backend, test: fn(&mut Fixture)) {
    let mut fixture = Fixture::new(backend);
    test(&mut fixture);
}

/// `contract_tests! { behaviour, other_behaviour }` makes, for each listed
/// `fn behaviour(f: &mut Fixture)` of the calling file, a module `behaviour` with one
/// `#[test]` per backend (`store::contract::<file>::<behaviour>::sled`). Attributes
/// written before a name (`#[ignore = "why"]`) go on both of its tests.
macro_rules! contract_tests {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                $(#[$attr])*
                fn sled() {
                    $crate::store::contract::run($crate::store::contract::Backend::Sled, super::$name);
                }
                #[test]
                $(#[$attr])*
                fn postgres() {
                    $crate::store::contract::run($crate::store::contract::Backend::Postgres, super::$name);
                }
            }
        )*
    };
}
pub(crate) use contract_tests;
