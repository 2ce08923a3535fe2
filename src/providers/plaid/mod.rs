//! Plaid: the client acctor uses to pull transaction deltas (`/transactions/sync`), list a
//! date window for reconciliation (`/transactions/get`) and verify Plaid's signed
//! webhooks. It speaks Plaid's real wire format ([`wire`]), so the same code runs against
//! Plaid and against the built-in sandbox bank.
//!
//! - [`client`]: HTTP calls, credentials, error mapping, verbatim transactions.
//! - [`errors`]: what each Plaid error means ([`crate::providers::ErrorClass`]).
//! - `verify`: the `Plaid-Verification` JWT (ES256 only).
//! - `webhooks`: what a webhook body means ([`crate::providers::WebhookEffect`]).
//! - `keys`: the verification key cache that keeps verification off the network.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;

pub mod client;
pub mod errors;
mod keys;
mod verify;
mod webhooks;
pub mod wire;

#[cfg(test)]
mod tests;

pub use client::{PlaidClient, PlaidClientConfig};

/// base64url as JWS and JWK use it: unpadded, but padding is tolerated on input because
/// some encoders add it.
pub(crate) const B64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
