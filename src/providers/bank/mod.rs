//! The account-opening bank: the client acctor uses to open accounts and issue virtual
//! cards, and the verifier of the status webhooks the bank sends while an opening moves
//! along. Opening an account takes the bank minutes to days (KYC, compliance), so the
//! API is asynchronous: a create answers at once with a tracking id, and the outcome
//! arrives as a webhook (with a status endpoint to poll when webhooks go missing). The
//! wire format is ours to define; it follows Stripe's conventions, which the bank's
//! engineers and ours both know.
//!
//! # Wire format
//!
//! Every call carries `Authorization: Bearer {api_key}`; bodies are JSON.
//!
//! - `POST {base}/v2/account-openings` with `Idempotency-Key: {request_id}` and body
//!   `{customer_id, market, segment, legal_name, email?, registration_number?}` answers
//!   202 `{tracking_id, request_id, status: "INITIATED"}`. A repeat of the key with the
//!   same body answers the same (200), never opens a second account; the key with a
//!   different body answers 422 `idempotency_key_reused`.
//! - `GET {base}/v2/account-openings/{tracking_id}` answers 200
//!   `{tracking_id, request_id, status, iban?, bic?, reason?, updated_at}`, or 404
//!   `not_found`.
//! - Legacy `POST {base}/v1/accounts` (same key rules, same body) blocks until the bank
//!   decides and answers 200 `{status: "COMPLETED", iban, bic}` or
//!   `{status: "REJECTED", reason?}`.
//! - `POST {base}/v1/cards` with `Idempotency-Key: {step_id}` and body
//!   `{customer_id, iban, type: "virtual"}` answers 201 `{card_id, last4}` the first
//!   time and 200 with the same card for a repeat of the key.
//! - Errors are `{"error": {"code", "message"}}` with the bank's request id in
//!   `x-request-id`; `errors` says what each status means ([`ErrorClass`]).
//!
//! Statuses are `INITIATED` → `IN_PROGRESS` → `COMPLETED` (with `iban` and `bic`) or
//! `REJECTED` (with a `reason` when the bank gives one); see [`BankStatus`].
//!
//! # Webhooks
//!
//! Each status change is POSTed to the configured URL with the body
//! `{event_id, tracking_id, request_id, status, iban?, bic?, reason?, occurred_at
//! (RFC 3339), simulated?: bool (default false)}` and the header
//! `bank-signature: t={unix seconds},v1={hex},v1={hex}…` where each `v1` is
//! `hex(HMAC-SHA256(secret, "{t}.{raw body}"))`, one per secret the bank signs with (two
//! during a rotation). A webhook verifies when any `v1` matches any configured secret
//! and `t` is within the tolerance of now; fields the verifier does not know are ignored,
//! so the bank can add some. A redelivery carries the same `event_id`.
//!
//! [`ErrorClass`]: crate::providers::ErrorClass

pub mod client;
pub mod errors;
mod verify;
pub mod wire;

#[cfg(test)]
mod tests;

pub use client::{BankApi, BankClient, BankClientConfig, IDEMPOTENCY_HEADER};
pub use verify::{sign, BankWebhook, BankWebhookVerifier};
pub use wire::{
    BankStatus, CardRequest, IssuedCard, OpeningAccepted, OpeningRequest, StatusReport,
};

/// The header carrying a webhook's signature (lowercase, as `HeaderMap` keys are).
pub const SIGNATURE_HEADER: &str = "bank-signature";
