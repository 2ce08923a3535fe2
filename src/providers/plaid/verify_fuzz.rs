//! Fuzz properties of the `Plaid-Verification` check (see `crate::fuzz_support` for the
//! short and long profiles): arbitrary headers and bodies never panic and are never
//! accepted; every mutation of a validly signed webhook is refused unless it is the same
//! event (same body bytes, same signed header and claims segments, same signature
//! bytes, within the age window); `iat` and the clock are compared without overflow.
//!
//! The only token changes that are no-ops are in the signature segment's encoding:
//! base64url padding, which the decoder tolerates (some encoders add it). ECDSA's own
//! malleability (r, n - s) is out of reach of byte mutations; it too would only
//! re-present the same body, whose dedup key is of the body bytes, not the token.

use std::sync::Arc;

use base64::Engine as _;
use futures::FutureExt as _;
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use serde_json::{json, Value};

use super::super::keys::{KeyCache, KeyFetcher};
use super::super::tests::Signer;
use super::super::webhooks::fuzz::{valid_webhook, ValidWebhook};
use super::super::webhooks::parse_body;
use super::super::B64URL;
use super::WebhookVerifier;
use crate::fuzz_support::{fuzz, mutated, mutations, Mutation};
use crate::providers::plaid::errors::api_error;
use crate::providers::{VerifiedWebhook, WebhookError};

const KID: &str = "fuzz-kid-1";
const NOW: i64 = 1_700_000_000;
const MAX_AGE_SECS: i64 = 300;

/// A verifier whose key cache answers `KID` with `signer`'s key at once (and any other
/// kid as unknown), so a case runs on the caller's thread without a runtime.
fn verifier_for(signer: &Signer, max_age_secs: i64) -> WebhookVerifier {
    let jwk = signer.jwk(KID, None);
    let fetcher: KeyFetcher = Arc::new(move |kid: String| {
        let jwk = jwk.clone();
        async move {
            if kid == jwk.kid {
                Ok(jwk)
            } else {
                Err(api_error(
                    400,
                    "INVALID_INPUT".to_owned(),
                    "INVALID_WEBHOOK_VERIFICATION_KEY_ID".to_owned(),
                    "invalid key_id provided".to_owned(),
                    None,
                ))
            }
        }
        .boxed()
    });
    WebhookVerifier::new(KeyCache::new(fetcher), max_age_secs)
}

/// Verifies with the `Plaid-Verification` header set to `token`'s bytes. A token that
/// cannot be a header value at all never reaches acctor (the HTTP server refuses it), so
/// it counts as refused.
fn verify(
    verifier: &WebhookVerifier,
    token: &[u8],
    body: &[u8],
    now: i64,
) -> Option<Result<VerifiedWebhook, WebhookError>> {
    let value = HeaderValue::from_bytes(token).ok()?;
    let mut headers = HeaderMap::new();
    headers.insert("plaid-verification", value);
    Some(futures::executor::block_on(
        verifier.verify_at(&headers, body, now),
    ))
}

/// A compact JWS's three segments.
fn segments(token: &[u8]) -> Vec<&[u8]> {
    token.split(|b| *b == b'.').collect()
}

/// Whether `(token, body)` is the event `(original, original_body)` re-presented: same
/// body bytes, same signed segments, same signature bytes.
fn same_event(token: &[u8], body: &[u8], original: &[u8], original_body: &[u8]) -> bool {
    let (ours, theirs) = (segments(token), segments(original));
    let signature = |segment: &[u8]| B64URL.decode(segment).ok();
    body == original_body
        && ours.len() == 3
        && ours[..2] == theirs[..2]
        && signature(ours[2]).is_some()
        && signature(ours[2]) == signature(theirs[2])
}

/// How a validly signed webhook is changed.
#[derive(Clone, Debug)]
enum Change {
    /// Bytes of the token as sent.
    Token(Vec<Mutation>),
    /// Bytes of the body (whitespace, a re-ordered key: any change is another body).
    Body(Vec<Mutation>),
    /// Bytes of one decoded segment, then encoded again (unsigned).
    Segment(usize, Vec<Mutation>),
    /// Padding added to one segment's encoding.
    Padded(usize),
    /// Two segments swapped.
    Swapped(usize, usize),
    /// The body re-serialized (same JSON, other bytes).
    Reformatted,
    /// A header with the same claims but another alg / kid / critical extension,
    /// signed with the right key.
    Header(Value),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => mutations().prop_map(Change::Token),
        3 => mutations().prop_map(Change::Body),
        3 => (0usize..3, mutations()).prop_map(|(i, m)| Change::Segment(i, m)),
        1 => (0usize..3).prop_map(Change::Padded),
        1 => (0usize..3, 0usize..3).prop_map(|(a, b)| Change::Swapped(a, b)),
        1 => Just(Change::Reformatted),
        1 => prop_oneof![
            Just(json!({"alg": "none", "kid": KID})),
            Just(json!({"alg": "HS256", "kid": KID})),
            Just(json!({"alg": "es256", "kid": KID})),
            Just(json!({"alg": "ES256"})),
            Just(json!({"alg": "ES256", "kid": ""})),
            Just(json!({"alg": "ES256", "kid": "another-kid"})),
            Just(json!({"alg": "ES256", "kid": KID, "crit": ["exp"]})),
        ]
        .prop_map(Change::Header),
    ]
}

fn apply(change: &Change, signer: &Signer, token: &str, hook: &ValidWebhook) -> (Vec<u8>, Vec<u8>) {
    let body = hook.body.clone();
    let parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let join = |parts: &[String]| parts.join(".").into_bytes();
    match change {
        Change::Token(m) => (mutated(token.as_bytes(), m), body),
        Change::Body(m) => (token.as_bytes().to_vec(), mutated(&body, m)),
        Change::Segment(i, m) => {
            let mut parts = parts.clone();
            let decoded = B64URL.decode(&parts[*i]).unwrap_or_default();
            parts[*i] = B64URL.encode(mutated(&decoded, m));
            (join(&parts), body)
        }
        Change::Padded(i) => {
            let mut parts = parts.clone();
            let pad = (4 - parts[*i].len() % 4) % 4;
            parts[*i].push_str(&"=".repeat(pad.max(1)));
            (join(&parts), body)
        }
        Change::Swapped(a, b) => {
            let mut parts = parts.clone();
            parts.swap(*a, *b);
            (join(&parts), body)
        }
        Change::Reformatted => {
            let value: Value = serde_json::from_slice(&body).unwrap_or_default();
            let mut other = serde_json::to_vec_pretty(&value).unwrap_or_default();
            if other == body {
                other = serde_json::to_vec(&value).unwrap_or_default();
            }
            (token.as_bytes().to_vec(), other)
        }
        Change::Header(header) => {
            let claims: Value = B64URL
                .decode(&parts[1])
                .ok()
                .and_then(|c| serde_json::from_slice(&c).ok())
                .unwrap_or_default();
            (signer.sign_jws(header, &claims).into_bytes(), body)
        }
    }
}

#[test]
fn fuzz_valid_signed_webhooks_verify_to_their_effect() {
    let signer = Signer::generate();
    let verifier = verifier_for(&signer, MAX_AGE_SECS);
    let strategy = (valid_webhook(), -MAX_AGE_SECS..=MAX_AGE_SECS);
    fuzz("verify::valid", 128, strategy, |(hook, skew)| {
        let token = signer.webhook_token(KID, NOW + skew, &hook.body);
        let verified = verify(&verifier, token.as_bytes(), &hook.body, NOW)
            .ok_or_else(|| TestCaseError::fail("a signed token is a header value"))?
            .map_err(|e| TestCaseError::fail(format!("refused a valid webhook: {e}")))?;
        let parsed = parse_body(&hook.body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&verified.effect, &parsed.effect);
        prop_assert_eq!(&verified.effect.action, &hook.action);
        prop_assert_eq!(&verified.kind, &hook.kind);
        Ok(())
    });
}

#[test]
fn fuzz_changes_to_a_signed_webhook_are_refused_unless_it_is_the_same_event() {
    let signer = Signer::generate();
    let verifier = verifier_for(&signer, MAX_AGE_SECS);
    let strategy = (valid_webhook(), change());
    fuzz("verify::changed", 512, strategy, |(hook, change)| {
        let token = signer.webhook_token(KID, NOW - 1, &hook.body);
        let (changed_token, changed_body) = apply(&change, &signer, &token, &hook);
        let Some(outcome) = verify(&verifier, &changed_token, &changed_body, NOW) else {
            return Ok(());
        };
        let same = same_event(&changed_token, &changed_body, token.as_bytes(), &hook.body);
        // A same-event re-presentation may still be refused (e.g. a token too long
        // for a header); what matters is that nothing else is accepted.
        if let Ok(verified) = outcome {
            prop_assert!(same, "accepted a changed webhook");
            prop_assert_eq!(&verified.effect.action, &hook.action);
        }
        Ok(())
    });
}

/// Tokens that look more and more like a JWS: random bytes, three random base64url
/// segments, and headers of every alg with random claims and signatures.
fn forged_token() -> impl Strategy<Value = Vec<u8>> {
    let b64 = |bytes: Vec<u8>| B64URL.encode(bytes);
    let header = prop_oneof![
        Just(json!({"alg": "ES256", "kid": KID})),
        Just(json!({"alg": "none", "kid": KID})),
        Just(json!({"alg": "HS256", "kid": KID})),
        "[ -~]{0,16}".prop_map(|kid| json!({"alg": "ES256", "kid": kid})),
        Just(json!({"alg": "ES256", "kid": KID, "crit": []})),
        Just(json!(["ES256"])),
    ];
    let claims = (any::<i64>(), "[0-9a-f]{0,70}")
        .prop_map(|(iat, sha)| json!({"iat": iat, "request_body_sha256": sha}));
    let signature = prop_oneof![
        proptest::collection::vec(any::<u8>(), 64),
        proptest::collection::vec(any::<u8>(), 0..100),
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        "[A-Za-z0-9_=.-]{0,200}".prop_map(String::into_bytes),
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..900), 1..5).prop_map(
            move |parts| {
                parts
                    .into_iter()
                    .map(b64)
                    .collect::<Vec<_>>()
                    .join(".")
                    .into_bytes()
            }
        ),
        (header, claims, signature).prop_map(move |(h, c, s)| {
            format!(
                "{}.{}.{}",
                b64(h.to_string().into_bytes()),
                b64(c.to_string().into_bytes()),
                b64(s)
            )
            .into_bytes()
        }),
    ]
}

#[test]
fn fuzz_forged_headers_and_bodies_are_refused_without_panic() {
    let signer = Signer::generate();
    let verifier = verifier_for(&signer, MAX_AGE_SECS);
    let body = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..128),
        valid_webhook().prop_map(|hook| hook.body),
    ];
    let strategy = (forged_token(), body, any::<i64>());
    fuzz("verify::forged", 512, strategy, |(token, body, now)| {
        if let Some(outcome) = verify(&verifier, &token, &body, now) {
            prop_assert!(outcome.is_err(), "accepted a forged webhook");
        }
        Ok(())
    });
}

#[test]
fn fuzz_iat_and_the_clock_are_compared_without_overflow() {
    let signer = Signer::generate();
    let body = br#"{"webhook_type":"TRANSACTIONS","webhook_code":"DEFAULT_UPDATE","item_id":"i"}"#;
    let edge = prop_oneof![
        any::<i64>(),
        Just(i64::MIN),
        Just(i64::MAX),
        Just(0),
        -1000i64..1000,
    ];
    let max_age = prop_oneof![Just(0), Just(MAX_AGE_SECS), Just(i64::MAX), 0..=i64::MAX];
    let strategy = (edge.clone(), edge, max_age);
    fuzz("verify::clock", 256, strategy, |(iat, now, max_age)| {
        let verifier = verifier_for(&signer, max_age);
        let token = signer.webhook_token(KID, iat, body);
        let outcome = verify(&verifier, token.as_bytes(), body, now)
            .ok_or_else(|| TestCaseError::fail("a signed token is a header value"))?;
        let skew = (i128::from(now) - i128::from(iat)).abs();
        prop_assert_eq!(outcome.is_ok(), skew <= i128::from(max_age));
        Ok(())
    });
}

/// Found by `verify::clock`: a signed `iat` of `i64::MAX` checked at `now = -1` made
/// `-(now - iat)` overflow (a panic in debug builds, a wrong answer in release).
#[test]
fn regression_an_extreme_iat_is_refused_without_overflow() {
    let signer = Signer::generate();
    let body = br#"{"webhook_type":"ITEM","webhook_code":"ERROR","item_id":"i"}"#;
    for (iat, now) in [(i64::MAX, -1), (i64::MIN, 1), (i64::MAX, i64::MIN)] {
        let token = signer.webhook_token(KID, iat, body);
        let outcome = verify(&verifier_for(&signer, 0), token.as_bytes(), body, now);
        assert!(
            matches!(outcome, Some(Err(WebhookError::Unauthorized(_)))),
            "{iat} at {now}: {outcome:?}"
        );
    }
}

/// Found by `verify::forged`: the key cache computed `now - fetched_at` and
/// `now + NEGATIVE_TTL_SECS` unchecked, so one verifier asked at far-apart times (as
/// `verify_webhook_at` allows) overflowed.
#[test]
fn regression_the_key_cache_survives_far_apart_clocks() {
    let signer = Signer::generate();
    let verifier = verifier_for(&signer, MAX_AGE_SECS);
    let body = br#"{"webhook_type":"ITEM","webhook_code":"ERROR","item_id":"i"}"#;
    for now in [i64::MAX, i64::MIN, NOW, i64::MAX] {
        let token = signer.webhook_token(KID, now, body);
        let outcome = verify(&verifier, token.as_bytes(), body, now);
        assert!(matches!(outcome, Some(Ok(_))), "at {now}: {outcome:?}");
        // An unknown kid is remembered until `now + NEGATIVE_TTL_SECS`.
        let unknown = signer.sign_jws(
            &json!({"alg": "ES256", "kid": "unknown"}),
            &json!({"iat": now, "request_body_sha256": "00"}),
        );
        let outcome = verify(&verifier, unknown.as_bytes(), body, now);
        assert!(matches!(outcome, Some(Err(_))), "at {now}: {outcome:?}");
    }
}
