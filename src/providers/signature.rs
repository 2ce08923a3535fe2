//! The timestamped HMAC signature scheme that Stripe made common and the
//! account-opening bank copied: a header `t={unix seconds},v1={hex},v1={hex}…` where each
//! `v1` is `hex(HMAC-SHA256(secret, "{t}.{raw body}"))`. The signed payload binds the
//! exact bytes and the time together, so a captured webhook cannot be replayed outside
//! the tolerance window; one `v1` per active secret lets the sender sign with the new
//! and the old secret while a rotation is under way, and lets acctor accept either.
//!
//! Checks run in a deliberate order: the header is parsed and the timestamp checked
//! before any HMAC is computed (cheap refusals first), and every signature is compared
//! in constant time (`Mac::verify_slice`). The caller parses the body only once this
//! has passed, so an unsigned body is never interpreted.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

use super::WebhookError;

type HmacSha256 = Hmac<Sha256>;

/// Longest signature header read; a real one with two secrets is ~150 bytes.
const MAX_HEADER_BYTES: usize = 2048;
/// Most `v1` entries compared; more than a handful is not a rotation but an attack on
/// the verifier's time.
pub(crate) const MAX_SIGNATURES: usize = 8;
/// An HMAC-SHA256 tag.
const TAG_BYTES: usize = 32;

/// The MAC of `"{timestamp}.{body}"` under `secret`.
fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
    // Provably infallible: HMAC takes keys of any length, empty included (long ones
    // are hashed first); `new_from_slice` only fails for fixed-size-key MACs.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("hmac accepts keys of any length"));
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value for `body` signed at unix time `timestamp` with each of `secrets`.
pub fn sign(secrets: &[&[u8]], timestamp: i64, body: &[u8]) -> String {
    let t = timestamp.to_string();
    let mut header = format!("t={t}");
    for secret in secrets {
        let tag = mac(secret, &t, body).finalize().into_bytes();
        header.push_str(",v1=");
        header.push_str(&hex::encode(tag));
    }
    header
}

/// One scheme instance: which header carries the signature (named in every refusal).
#[derive(Clone, Copy, Debug)]
pub struct TimestampedHmac {
    /// The header's name, lowercase (`stripe-signature`, `bank-signature`).
    pub header: &'static str,
}

/// The parts of a signature header.
struct SignatureHeader<'a> {
    /// The timestamp exactly as sent (it is part of the signed payload).
    timestamp_text: &'a str,
    timestamp: i64,
    /// Every `v1` that decoded to a tag of the right size.
    tags: Vec<[u8; TAG_BYTES]>,
}

impl TimestampedHmac {
    fn refuse(&self, what: &str) -> WebhookError {
        WebhookError::Unauthorized(format!("{} {what}", self.header))
    }

    fn parse_header<'a>(
        &self,
        headers: &'a HeaderMap,
    ) -> Result<SignatureHeader<'a>, WebhookError> {
        let mut values = headers.get_all(self.header).iter();
        let value = values
            .next()
            .ok_or_else(|| WebhookError::Unauthorized(format!("missing {} header", self.header)))?;
        if values.next().is_some() {
            return Err(WebhookError::Unauthorized(format!(
                "more than one {} header",
                self.header
            )));
        }
        if value.len() > MAX_HEADER_BYTES {
            return Err(self.refuse("header is too long"));
        }
        let value = value
            .to_str()
            .map_err(|_| self.refuse("header is not ascii"))?;

        let mut timestamp_text = None;
        let mut tags = Vec::new();
        let mut v1_seen = 0usize;
        for part in value.split(',') {
            let Some((key, item)) = part.trim().split_once('=') else {
                return Err(self.refuse("header is not a list of key=value pairs"));
            };
            match key {
                "t" if timestamp_text.is_some() => {
                    return Err(self.refuse("header has two timestamps"));
                }
                "t" => timestamp_text = Some(item),
                "v1" => {
                    v1_seen += 1;
                    if v1_seen > MAX_SIGNATURES {
                        return Err(self.refuse("header has too many signatures"));
                    }
                    let mut tag = [0u8; TAG_BYTES];
                    // A v1 that is not 64 hex digits cannot match; other v1s still may.
                    if hex::decode_to_slice(item, &mut tag).is_ok() {
                        tags.push(tag);
                    }
                }
                // Other schemes (a future v2, Stripe's test-mode v0) are not ours to check.
                _ => {}
            }
        }
        let timestamp_text =
            timestamp_text.ok_or_else(|| self.refuse("header has no timestamp"))?;
        let timestamp = timestamp_text
            .parse::<i64>()
            .map_err(|_| self.refuse("timestamp is not an integer"))?;
        if v1_seen == 0 {
            return Err(self.refuse("header has no v1 signature"));
        }
        Ok(SignatureHeader {
            timestamp_text,
            timestamp,
            tags,
        })
    }

    /// Checks that `body` was signed by any of `secrets` within `tolerance` of `now`.
    /// Empty secrets never match: an empty HMAC key would be a secret everyone knows.
    pub fn verify<S: AsRef<[u8]>>(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        secrets: &[S],
        tolerance: Duration,
        now: DateTime<Utc>,
    ) -> Result<(), WebhookError> {
        let header = self.parse_header(headers)?;
        // In i128: the timestamp is whatever the sender put there, so the difference can
        // leave i64.
        let skew = (i128::from(now.timestamp()) - i128::from(header.timestamp)).unsigned_abs();
        if skew > u128::from(tolerance.as_secs()) {
            return Err(WebhookError::Unauthorized(
                "timestamp outside tolerance".into(),
            ));
        }
        let signed = secrets
            .iter()
            .map(AsRef::as_ref)
            .filter(|secret| !secret.is_empty())
            .any(|secret| {
                header.tags.iter().any(|tag| {
                    mac(secret, header.timestamp_text, body)
                        .verify_slice(tag)
                        .is_ok()
                })
            });
        if !signed {
            return Err(WebhookError::Unauthorized(format!(
                "no {} v1 matches a configured secret",
                self.header
            )));
        }
        Ok(())
    }
}
