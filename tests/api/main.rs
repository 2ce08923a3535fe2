//! Integration tests: the real server and the real sandbox bank on loopback, over HTTP.

mod accounts;
mod helpers;
mod reauth;
mod retries;
mod supervision;
mod sync;
mod webhooks;
