//! Outbound: everything that leaves acctor towards other systems, through one
//! persisted outbox and one sender. A message is written to the outbox in the same store
//! transaction as the change it announces, so it exists exactly when its change does
//! and survives restarts; the sender makes the outbox durable before it sends (never
//! announce a change a crash could still undo), signs each attempt (Standard Webhooks),
//! retries with exponential backoff and full jitter, and gives up past a max age.
//!
//! - [`signing`]: Standard Webhooks secrets and signatures.
//! - [`endpoint`]: where each destination's messages go ([`Endpoints`]).
//! - [`sender`]: the delivery loop over the outbox's due-time index.
//! - [`alerts`]: incident alerts, the first user of the outbox.
//!
//! A new user (subscriber webhooks, customer notifications) is a file here that says
//! how its changes become messages and how its destination resolves to an endpoint,
//! plus a `store::Destination` variant; the sender does not change.

pub mod alerts;
pub mod endpoint;
pub mod sender;
pub mod signing;

pub use endpoint::{Destinations, Endpoint, Endpoints, OutboundError};
pub use sender::{Pass, Sender, SenderCounters};
pub use signing::{decode_secret, origin_of, sign};
