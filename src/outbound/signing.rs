//! Signing of everything acctor sends out, per Standard Webhooks
//! (<https://www.standardwebhooks.com>): `webhook-id` is the message's stable id (the
//! same on every retry, so receivers can deduplicate), `webhook-timestamp` the attempt's
//! unix seconds, `webhook-signature` is `v1,` + base64(HMAC-SHA256(key,
//! "{id}.{timestamp}.{body}")) with the key decoded from a `whsec_…` secret. Alerts use it
//! today; subscriber webhooks and notifications sign the same way.

use base64::Engine as _;
use ring::hmac;
use secrecy::{ExposeSecret, SecretBox, SecretString};

/// Decodes a `whsec_…` secret into the HMAC key; `None` if malformed.
pub fn decode_secret(secret: &SecretString) -> Option<SecretBox<Vec<u8>>> {
    let encoded = secret.expose_secret().strip_prefix("whsec_")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    (24..=64)
        .contains(&key.len())
        .then(|| SecretBox::new(Box::new(key)))
}

/// The `webhook-signature` value for one attempt.
pub fn sign(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(msg_id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

/// `scheme://host:port` of a URL, for logs: receiver URLs often carry a secret in their
/// path or query (Slack- and PagerDuty-style hooks).
pub fn origin_of(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => parsed.origin().ascii_serialization(),
        Err(_) => "<invalid url>".to_string(),
    }
}
