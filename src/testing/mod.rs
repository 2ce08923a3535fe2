//! Test and benchmark support; nothing in the service uses it.
//!
//! It lives in the library rather than under `tests/` because more than the test suite
//! needs it: the library's unit tests, every integration-test binary and `acctor-bench`
//! all start throwaway PostgreSQL servers the same way, and only the library is shared
//! between all three.
//!
//! [`PgServer`] starts a private PostgreSQL server (the distribution's `initdb` and
//! `postgres`, in a temp dir, on a free port), never a shared system service, so tests
//! need no set-up beyond the installed binaries (`scripts/test` installs them) and run in
//! parallel: each asks for a fresh database with [`PgServer::create_database`].

mod pg_binaries;
mod pg_spawner;
pub mod postgres;

pub use postgres::{PgHarnessError, PgServer, TestDatabase};
