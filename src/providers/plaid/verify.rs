//! Verification of Plaid webhooks: the `Plaid-Verification` header is a compact JWS
//! (ES256) whose claims bind the exact body (`request_body_sha256`) and a time (`iat`).
//!
//! The order of checks is deliberate: the algorithm is pinned to ES256 before any key is
//! looked up (so `none`/`HS256` tokens cost nothing and can never be "verified" with a
//! public key used as an HMAC secret), the signature is checked before any claim is
//! trusted, and the body is parsed only once it is known to be Plaid's. Decoding uses
//! fixed stack buffers so a cached-key verification allocates only for the parsed body.

use std::borrow::Cow;

use http::HeaderMap;
use ring::digest;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use base64::Engine as _;

use super::keys::{KeyCache, KeyError};
use super::webhooks::parse_body;
use super::B64URL;
use crate::providers::{VerifiedWebhook, WebhookError};

/// The header carrying the JWT (header names are case-insensitive; `HeaderMap` keys
/// are lowercase).
const VERIFICATION_HEADER: &str = "plaid-verification";
/// Largest decoded JWS header or claims accepted; Plaid's are under 150 bytes.
const MAX_SEGMENT_BYTES: usize = 1024;
/// An ES256 signature: r || s, 32 bytes each.
const SIGNATURE_BYTES: usize = 64;

#[derive(Deserialize)]
struct JwsHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    /// Critical extensions we would have to understand; we understand none.
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Claims<'a> {
    iat: i64,
    #[serde(borrow)]
    request_body_sha256: Cow<'a, str>,
}

/// Verifies Plaid webhooks against keys from a [`KeyCache`].
pub(crate) struct WebhookVerifier {
    keys: KeyCache,
    max_age_secs: i64,
}

fn unauthorized(reason: impl Into<String>) -> WebhookError {
    WebhookError::Unauthorized(reason.into())
}

impl WebhookVerifier {
    /// A verifier accepting webhooks issued at most `max_age_secs` from now.
    pub(crate) fn new(keys: KeyCache, max_age_secs: i64) -> Self {
        WebhookVerifier { keys, max_age_secs }
    }

    /// The key cache (tests observe in-flight fetches through it).
    #[cfg(test)]
    pub(crate) fn keys(&self) -> &KeyCache {
        &self.keys
    }

    /// Verifies `body` against the header's JWT as of `now` (unix seconds), then parses it.
    pub(crate) async fn verify_at(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<VerifiedWebhook, WebhookError> {
        let token = headers
            .get(VERIFICATION_HEADER)
            .ok_or_else(|| unauthorized("missing Plaid-Verification header"))?
            .to_str()
            .map_err(|_| unauthorized("Plaid-Verification header is not ascii"))?;
        let (header_b64, rest) = token
            .split_once('.')
            .ok_or_else(|| unauthorized("Plaid-Verification is not a compact jws"))?;
        let (claims_b64, signature_b64) = rest
            .split_once('.')
            .ok_or_else(|| unauthorized("Plaid-Verification is not a compact jws"))?;
        if signature_b64.contains('.') {
            return Err(unauthorized("Plaid-Verification is not a compact jws"));
        }

        let mut header_buf = [0u8; MAX_SEGMENT_BYTES];
        let header_bytes = decode_segment(header_b64, &mut header_buf, "header")?;
        let header: JwsHeader<'_> = serde_json::from_slice(header_bytes)
            .map_err(|_| unauthorized("jwt header is not valid json"))?;
        if header.alg != "ES256" {
            let alg: String = header.alg.chars().take(32).collect();
            return Err(unauthorized(format!(
                "jwt alg {alg:?} is not allowed, only ES256"
            )));
        }
        if header.crit.is_some() {
            return Err(unauthorized(
                "jwt header has unsupported critical extensions",
            ));
        }
        let kid = match header.kid.as_deref() {
            Some(kid) if !kid.is_empty() => kid,
            _ => return Err(unauthorized("jwt header has no kid")),
        };

        let key = self.keys.get(kid, now).await.map_err(|e| match e {
            KeyError::NotFound => unauthorized("unknown verification key id"),
            KeyError::Unavailable(reason) => WebhookError::KeyUnavailable(reason),
        })?;
        if key.expired_at.is_some_and(|expired_at| expired_at <= now) {
            return Err(unauthorized("verification key has expired"));
        }

        let mut signature = [0u8; SIGNATURE_BYTES + 8];
        let signature_len = B64URL
            .decode_slice(signature_b64, &mut signature)
            .map_err(|_| unauthorized("jwt signature is not base64url"))?;
        if signature_len != SIGNATURE_BYTES {
            return Err(unauthorized("jwt signature has the wrong length"));
        }
        // The signing input is the first two segments exactly as received.
        let signing_input = &token[..header_b64.len() + 1 + claims_b64.len()];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &key.point[..])
            .verify(signing_input.as_bytes(), &signature[..SIGNATURE_BYTES])
            .map_err(|_| unauthorized("jwt signature does not verify"))?;

        let mut claims_buf = [0u8; MAX_SEGMENT_BYTES];
        let claims_bytes = decode_segment(claims_b64, &mut claims_buf, "claims")?;
        let claims: Claims<'_> = serde_json::from_slice(claims_bytes)
            .map_err(|_| unauthorized("jwt claims lack iat or request_body_sha256"))?;
        // In i128: `iat` is whatever the signer put there and `now` whatever the caller
        // passed, so their difference (and its negation) can leave i64.
        let age = i128::from(now) - i128::from(claims.iat);
        let max_age = i128::from(self.max_age_secs);
        if age > max_age {
            return Err(unauthorized(format!("stale webhook: issued {age}s ago")));
        }
        if -age > max_age {
            return Err(unauthorized(format!(
                "webhook issued {}s in the future",
                -age
            )));
        }

        let mut body_hex = [0u8; 64];
        let body_digest = digest::digest(&digest::SHA256, body);
        // 32 digest bytes always fill exactly 64 hex characters.
        hex::encode_to_slice(body_digest.as_ref(), &mut body_hex)
            .map_err(|_| unauthorized("body digest could not be encoded"))?;
        if !bool::from(body_hex[..].ct_eq(claims.request_body_sha256.as_bytes())) {
            return Err(unauthorized("request_body_sha256 does not match the body"));
        }

        parse_body(body)
    }
}

fn decode_segment<'b>(
    encoded: &str,
    buf: &'b mut [u8; MAX_SEGMENT_BYTES],
    what: &str,
) -> Result<&'b [u8], WebhookError> {
    // base64 needs 4 characters per 3 bytes; refuse before decoding anything larger.
    if encoded.len() > MAX_SEGMENT_BYTES / 3 * 4 {
        return Err(unauthorized(format!("jwt {what} is too large")));
    }
    let len = B64URL
        .decode_slice(encoded, &mut buf[..])
        .map_err(|_| unauthorized(format!("jwt {what} is not base64url")))?;
    Ok(&buf[..len])
}

#[cfg(test)]
#[path = "verify_fuzz.rs"]
mod fuzz;
