//! Webhook signing and delivery, exactly as Plaid does it, so acctor's verifier is
//! exercised for real: an ES256 JWT in the `Plaid-Verification` header whose claims
//! carry the SHA-256 of the exact body bytes, and a JWK served by
//! `/webhook_verification_key/get` to check it with.
//!
//! Deliveries are awaited by whatever caused them and report the status the receiver
//! answered, so tests and benchmarks know the webhook has landed when the call returns.
//! A delivery that fails (no answer or a non-2xx answer) is retried a few times with a
//! short doubling backoff, as Plaid retries.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use tracing::{debug, warn};

use crate::providers::plaid::wire::PlaidJwk;

/// The header Plaid puts the JWT in.
pub const VERIFICATION_HEADER: &str = "Plaid-Verification";

/// Signs webhook bodies with one P-256 key.
pub(crate) struct WebhookSigner {
    key_pair: EcdsaKeyPair,
    /// The private key as generated, kept so a persistent sandbox can store it and sign
    /// with the same key (and `kid`) after a restart. Never logged.
    pkcs8: Vec<u8>,
    rng: SystemRandom,
    jwk: PlaidJwk,
}

/// Why signing failed (only when the system random source fails).
#[derive(Debug, thiserror::Error)]
#[error("webhook signing failed: {0}")]
pub(crate) struct SignError(&'static str);

impl WebhookSigner {
    /// A signer with a fresh key created now (`created_at` in unix seconds).
    pub fn generate(kid: String, created_at: i64) -> Result<Self, SignError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| SignError("key generation"))?;
        Self::from_pkcs8(pkcs8.as_ref().to_vec(), kid, created_at)
    }

    /// A signer with a stored key: the same `kid` and public key as when it was made.
    pub fn from_pkcs8(pkcs8: Vec<u8>, kid: String, created_at: i64) -> Result<Self, SignError> {
        let rng = SystemRandom::new();
        let key_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .map_err(|_| SignError("key parsing"))?;
        // An uncompressed P-256 point: 0x04 || x (32 bytes) || y (32 bytes).
        let point = key_pair.public_key().as_ref();
        if point.len() != 65 || point[0] != 4 {
            return Err(SignError("unexpected public key encoding"));
        }
        let jwk = PlaidJwk {
            alg: "ES256".to_string(),
            created_at,
            crv: "P-256".to_string(),
            expired_at: None,
            kid,
            kty: "EC".to_string(),
            key_use: "sig".to_string(),
            x: URL_SAFE_NO_PAD.encode(&point[1..33]),
            y: URL_SAFE_NO_PAD.encode(&point[33..65]),
        };
        Ok(WebhookSigner {
            key_pair,
            pkcs8,
            rng,
            jwk,
        })
    }

    /// The private key in PKCS#8 form, for the sandbox snapshot only.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public key, as `/webhook_verification_key/get` serves it.
    pub fn jwk(&self) -> &PlaidJwk {
        &self.jwk
    }

    /// The `Plaid-Verification` JWT for `body`, issued at `iat` (unix seconds).
    pub fn sign(&self, body: &[u8], iat: i64) -> Result<String, SignError> {
        let header = serde_json::json!({"alg": "ES256", "kid": self.jwk.kid, "typ": "JWT"});
        let claims = serde_json::json!({
            "iat": iat,
            "request_body_sha256":
                hex::encode(ring::digest::digest(&ring::digest::SHA256, body)),
        });
        // `Value::to_string` cannot fail, unlike `to_vec` on arbitrary types.
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key_pair
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| SignError("signing"))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}

/// How a delivery ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// The status of the last answer, `None` if the receiver never answered.
    pub status: Option<u16>,
    /// Attempts made.
    pub attempts: u32,
}

/// Sends signed webhooks.
pub(crate) struct WebhookSender {
    signer: WebhookSigner,
    http: reqwest::Client,
    attempts: u32,
    first_backoff: Duration,
}

impl WebhookSender {
    /// A sender signing with `signer`.
    pub fn new(signer: WebhookSigner) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        WebhookSender {
            signer,
            http,
            attempts: 4,
            first_backoff: Duration::from_millis(25),
        }
    }

    /// The signer (for the verification-key endpoint).
    pub fn signer(&self) -> &WebhookSigner {
        &self.signer
    }

    /// Posts `body` to `url`, signed, retrying failures; returns how it ended.
    pub async fn deliver(&self, url: &str, body: &[u8]) -> Delivery {
        let mut backoff = self.first_backoff;
        let mut status = None;
        for attempt in 1..=self.attempts {
            let jwt = match self.signer.sign(body, chrono::Utc::now().timestamp()) {
                Ok(jwt) => jwt,
                Err(e) => {
                    warn!(error = %e, "webhook not signed");
                    return Delivery {
                        status: None,
                        attempts: attempt - 1,
                    };
                }
            };
            let result = self
                .http
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(VERIFICATION_HEADER, jwt)
                .body(body.to_vec())
                .send()
                .await;
            match result {
                Ok(response) if response.status().is_success() => {
                    return Delivery {
                        status: Some(response.status().as_u16()),
                        attempts: attempt,
                    };
                }
                Ok(response) => {
                    status = Some(response.status().as_u16());
                    debug!(
                        attempt,
                        status = response.status().as_u16(),
                        "webhook delivery refused"
                    );
                }
                Err(e) => {
                    status = None;
                    debug!(attempt, error = %e, "webhook delivery failed");
                }
            }
            if attempt < self.attempts {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
        warn!(attempts = self.attempts, status = %status_text(status), "webhook delivery gave up");
        Delivery {
            status,
            attempts: self.attempts,
        }
    }
}

/// A webhook body as Plaid sends it: the common fields plus `extra`.
pub(crate) fn body(
    webhook_type: &str,
    webhook_code: &str,
    item_id: &str,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Vec<u8> {
    let mut object = extra;
    object.insert("webhook_type".into(), webhook_type.into());
    object.insert("webhook_code".into(), webhook_code.into());
    object.insert("item_id".into(), item_id.into());
    object.insert("environment".into(), "sandbox".into());
    serde_json::Value::Object(object).to_string().into_bytes()
}

/// Verifies a webhook like a client would, from the JWK and the JWT only; panics on
/// any mismatch. Shared by this module's tests and the HTTP tests.
/// A delivery's HTTP status for the log: the number, or `none` when nothing answered.
pub(crate) fn status_text(status: Option<u16>) -> String {
    status.map_or_else(|| "none".to_string(), |s| s.to_string())
}

#[cfg(test)]
pub(crate) fn verify_webhook(
    jwk: &PlaidJwk,
    jwt: &str,
    body: &[u8],
) -> crate::providers::plaid::wire::VerificationClaims {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["kid"], jwk.kid.as_str());
    let mut point = vec![4u8];
    point.extend(URL_SAFE_NO_PAD.decode(&jwk.x).unwrap());
    point.extend(URL_SAFE_NO_PAD.decode(&jwk.y).unwrap());
    let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    assert_eq!(signature.len(), 64, "raw r||s");
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &point)
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
        .expect("signature verifies");
    let claims: crate::providers::plaid::wire::VerificationClaims =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(
        claims.request_body_sha256,
        hex::encode(ring::digest::digest(&ring::digest::SHA256, body))
    );
    claims
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::plaid::wire::VerificationClaims;

    #[test]
    fn signature_verifies_with_the_jwk_and_binds_the_body() {
        let signer = WebhookSigner::generate("kid-1".into(), 1).unwrap();
        let body = body(
            "TRANSACTIONS",
            "SYNC_UPDATES_AVAILABLE",
            "item",
            Default::default(),
        );
        let jwt = signer.sign(&body, 1_700_000_000).unwrap();
        assert_eq!(verify_webhook(signer.jwk(), &jwt, &body).iat, 1_700_000_000);

        // A different body does not match the signed hash.
        let claims_part = jwt.split('.').nth(1).unwrap();
        let claims: VerificationClaims =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims_part).unwrap()).unwrap();
        assert_ne!(
            claims.request_body_sha256,
            hex::encode(ring::digest::digest(&ring::digest::SHA256, b"{}"))
        );
        // Another key does not verify it.
        let other = WebhookSigner::generate("kid-1".into(), 1).unwrap();
        let result = std::panic::catch_unwind(|| verify_webhook(other.jwk(), &jwt, &body));
        assert!(result.is_err());
    }
}
