//! Integration tests: the real server and the real sandbox bank on loopback, over HTTP.

mod accounts;
mod budget;
mod cdp;
mod convergence;
mod dashboard;
mod helpers;
mod introspection;
mod reauth;
mod retries;
mod secrets;
mod shutdown;
mod supervision;
mod surface;
mod sync;
mod webhooks;
