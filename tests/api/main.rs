//! Integration tests: the real server and the real sandbox bank on loopback, over HTTP.

mod accounts;
mod budget;
mod cdp;
mod convergence;
mod dashboard;
mod demo;
mod helpers;
mod introspection;
mod reauth;
mod retries;
mod schemathesis;
mod secrets;
mod shutdown;
mod supervision;
mod surface;
mod surface_rules;
mod sync;
mod webhooks;
