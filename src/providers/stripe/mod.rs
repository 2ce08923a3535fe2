//! Stripe: the client acctor mirrors a Stripe account through, the verifier of the
//! events Stripe sends, and what each of Stripe's error answers means.
//!
//! # Wire format (Stripe's, as documented at docs.stripe.com/api)
//!
//! - Every call carries `Authorization: Bearer {api key}`, and `Stripe-Account: acct_…`
//!   when the account is a Connect account reached through its platform's key.
//! - `GET /v1/{type}?limit=100&starting_after=…&created[gte]=…&created[lt]=…` lists
//!   objects newest first: `{"object": "list", "data": [...], "has_more", "url"}`.
//!   `GET /v1/subscriptions` lists only live subscriptions unless `status=all`.
//! - `GET /v1/{type}/{id}` retrieves one; a deleted or unknown object answers 404 with
//!   `code: resource_missing`.
//! - `GET /v1/events?created[gte]=…` lists events (kept 30 days) newest first.
//! - Errors are `{"error": {"type", "code"?, "message", "param"?}}`, the request id in
//!   `Request-Id`, `Retry-After` on some 429s, and `Stripe-Should-Retry` when Stripe
//!   knows whether a retry can help (see [`errors`]).
//!
//! # Webhooks
//!
//! Each event is POSTed as JSON with `Stripe-Signature: t={unix},v1={hex}[,v1=…]`,
//! HMAC-SHA256 of `"{t}.{raw body}"` with the endpoint's secret (`whsec_…`; one `v1`
//! per secret while an endpoint secret is rolled). An event for a Connect account
//! carries its id in `account`.

pub mod client;
pub mod errors;
pub mod verify;
pub mod wire;

pub use client::{
    DynStripeApi, Fetched, ListRequest, StripeAccess, StripeApi, StripeClient, StripeClientConfig,
};
pub use verify::{sign, verify_event};

/// The webhook signature header.
pub const SIGNATURE_HEADER: &str = "stripe-signature";
/// The header naming the Connect account a platform's call is for.
pub const ACCOUNT_HEADER: &str = "stripe-account";
/// The header carrying a write's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Stripe's default webhook timestamp tolerance (its libraries use 300 s).
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;
/// The most objects one list call returns.
pub const MAX_PAGE: u32 = 100;
