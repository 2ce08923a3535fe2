//! acctor keeps an always-correct local copy of financial data held by third-party
//! providers, driven by their webhooks.
//!
//! Every linked account is an actor whose mailbox serializes everything done to it; the
//! store is the only memory that matters (actors rebuild from it at any moment). See
//! `DESIGN.md` for the data flow; the modules mirror it:
//! [`http`] translates requests, [`service`] holds the use-cases (link, ingest, resume),
//! [`actors`] serialize the work on each account, [`sync`] says what one sync means for
//! each provider, [`providers`] talk to the outside, [`outbound`] sends what leaves,
//! [`store`] keeps the invariants, [`sandbox`] simulates the outside. Arrows point
//! down that list, never up. [`testing`] is for tests and benchmarks only: it starts
//! throwaway PostgreSQL servers.

pub mod actors;
pub mod app;
pub mod backoff;
pub mod clock;
pub mod config;
pub mod domain;
#[cfg(test)]
pub(crate) mod fuzz_support;
pub mod http;
pub mod metrics;
pub mod outbound;
pub mod providers;
pub mod sandbox;
pub mod secrets;
pub mod service;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod testing;
