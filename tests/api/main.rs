//! Integration tests: the real server and the real sandbox bank on loopback, over HTTP.

mod accounts;
mod budget;
mod cdp;
mod convergence;
mod dashboard;
mod demo;
mod helpers;
mod introspection;
mod operations;
mod postgres;
mod reauth;
mod retries;
mod schemathesis;
mod secrets;
mod shutdown;
mod stripe;
mod stripe_push;
mod supervision;
mod surface;
mod surface_rules;
mod sync;
mod webhooks;

/// The same tests again on the PostgreSQL store (see `helpers::backend_of_this_test`):
/// everything that syncs, ingests, retries, polls and parks an account, and mirrors a
/// Stripe account.
#[path = "."]
#[allow(
    clippy::duplicate_mod,
    reason = "the same test files, compiled a second time to run on the other store"
)]
mod on_postgres {
    mod convergence;
    mod operations;
    mod reauth;
    mod retries;
    mod stripe;
    mod stripe_push;
    mod supervision;
    mod sync;
    mod webhooks;
}
