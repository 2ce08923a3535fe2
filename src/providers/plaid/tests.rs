//! Tests of the Plaid client against a tiny in-test Plaid (axum on 127.0.0.1:0) that
//! serves verification keys and canned transaction pages, signing webhooks with a ring
//! key generated per test, so every test owns its bank and they run in parallel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use chrono::NaiveDate;
use http::HeaderMap;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::keys::{
    KEY_TTL_SECS, MAX_NEW_KID_FETCHES_PER_SEC, NEGATIVE_TTL_SECS, STALE_IF_ERROR_SECS,
};
use super::webhooks::triggers_sync;
use super::wire::{self, PlaidJwk};
use super::{PlaidClient, PlaidClientConfig, B64URL};
use crate::domain::AccessToken;
use crate::providers::{
    CursorSource, ErrorClass, Provider, ProviderError, WebhookAction, WebhookError,
};

const NOW: i64 = 1_700_000_000;
const KID: &str = "6c5516e1-92dc-479e-a8ff-5a51992e0001";
const MAX_AGE_SECS: u64 = 300;
const SECRET: &str = "s3cr3t-do-not-print";
const SYNC_BODY: &str = r#"{"webhook_type":"TRANSACTIONS","webhook_code":"SYNC_UPDATES_AVAILABLE","item_id":"item-1","initial_update_complete":true,"historical_update_complete":false,"environment":"sandbox"}"#;

// ---------------------------------------------------------------------------------------
// Signing (shared with the verifier's fuzz properties)

pub(super) struct Signer {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Signer {
    pub(super) fn generate() -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Signer { pair, rng }
    }

    pub(super) fn jwk(&self, kid: &str, expired_at: Option<i64>) -> PlaidJwk {
        let point = self.pair.public_key().as_ref();
        assert_eq!(point.len(), 65);
        PlaidJwk {
            alg: "ES256".into(),
            created_at: NOW - 86_400,
            crv: "P-256".into(),
            expired_at,
            kid: kid.into(),
            kty: "EC".into(),
            key_use: "sig".into(),
            x: B64URL.encode(&point[1..33]),
            y: B64URL.encode(&point[33..65]),
        }
    }

    pub(super) fn sign_jws(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let signature = self.pair.sign(&self.rng, input.as_bytes()).unwrap();
        format!("{input}.{}", B64URL.encode(signature.as_ref()))
    }

    pub(super) fn webhook_token(&self, kid: &str, iat: i64, body: &[u8]) -> String {
        self.sign_jws(
            &json!({"alg": "ES256", "kid": kid, "typ": "JWT"}),
            &json!({"iat": iat, "request_body_sha256": body_sha256(body)}),
        )
    }
}

pub(super) fn body_sha256(body: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, body))
}

fn headers_with(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    // Plaid's canonical capitalization: lookup must not depend on it.
    headers.insert(
        HeaderName::from_bytes(b"Plaid-Verification").unwrap(),
        token.parse().unwrap(),
    );
    headers
}

// ---------------------------------------------------------------------------------------
// The in-test bank

enum Reply {
    Json(StatusCode, String),
    Hang,
}

struct Bank {
    keys: Mutex<HashMap<String, PlaidJwk>>,
    key_fetches: AtomicUsize,
    key_gate: Semaphore,
    keys_down: AtomicBool,
    reply: Mutex<Option<Reply>>,
    last_request: Mutex<Option<(HeaderMap, Value)>>,
}

impl Bank {
    fn new(gated: bool) -> Arc<Bank> {
        Arc::new(Bank {
            keys: Mutex::new(HashMap::new()),
            key_fetches: AtomicUsize::new(0),
            key_gate: Semaphore::new(if gated { 0 } else { Semaphore::MAX_PERMITS }),
            keys_down: AtomicBool::new(false),
            reply: Mutex::new(None),
            last_request: Mutex::new(None),
        })
    }

    fn add_key(&self, jwk: PlaidJwk) {
        self.keys.lock().unwrap().insert(jwk.kid.clone(), jwk);
    }

    fn fetches(&self) -> usize {
        self.key_fetches.load(Ordering::SeqCst)
    }

    fn reply_with(&self, reply: Reply) {
        *self.reply.lock().unwrap() = Some(reply);
    }

    fn last_request(&self) -> (HeaderMap, Value) {
        self.last_request.lock().unwrap().clone().unwrap()
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn plaid_error(status: StatusCode, error_type: &str, code: &str, message: &str) -> Response {
    let err = wire::PlaidError {
        error_type: error_type.into(),
        error_code: code.into(),
        error_message: message.into(),
        display_message: None,
        request_id: "req-err".into(),
        causes: vec![],
        status: Some(status.as_u16()),
        documentation_url: None,
        suggested_action: None,
    };
    json_response(status, serde_json::to_string(&err).unwrap())
}

async fn key_get(
    State(bank): State<Arc<Bank>>,
    Json(request): Json<wire::WebhookVerificationKeyGetRequest>,
) -> Response {
    bank.key_fetches.fetch_add(1, Ordering::SeqCst);
    drop(bank.key_gate.acquire().await.unwrap());
    if bank.keys_down.load(Ordering::SeqCst) {
        return plaid_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "API_ERROR",
            wire::INTERNAL_SERVER_ERROR,
            "down",
        );
    }
    let key = bank.keys.lock().unwrap().get(&request.key_id).cloned();
    match key {
        Some(key) => Json(wire::WebhookVerificationKeyGetResponse {
            key,
            request_id: "req-key".into(),
        })
        .into_response(),
        None => plaid_error(
            StatusCode::BAD_REQUEST,
            "INVALID_INPUT",
            "INVALID_WEBHOOK_VERIFICATION_KEY_ID",
            "invalid key_id provided",
        ),
    }
}

async fn canned(
    State(bank): State<Arc<Bank>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    *bank.last_request.lock().unwrap() = Some((headers, body));
    let reply = bank.reply.lock().unwrap().take();
    match reply {
        Some(Reply::Json(status, body)) => json_response(status, body),
        Some(Reply::Hang) => std::future::pending().await,
        None => json_response(StatusCode::NOT_FOUND, "{}".into()),
    }
}

async fn public_token_create(Json(body): Json<wire::SandboxPublicTokenCreateRequest>) -> Response {
    assert_eq!(body.initial_products, vec!["transactions".to_owned()]);
    let token = format!(
        "public-sandbox-{}-{}",
        body.institution_id,
        body.options.and_then(|o| o.webhook).unwrap_or_default()
    );
    Json(wire::SandboxPublicTokenCreateResponse {
        public_token: token,
        request_id: "req-create".into(),
    })
    .into_response()
}

async fn public_token_exchange(Json(body): Json<wire::ItemPublicTokenExchangeRequest>) -> Response {
    Json(wire::ItemPublicTokenExchangeResponse {
        access_token: format!("access-{}", body.public_token),
        item_id: "item-linked".into(),
        request_id: "req-exchange".into(),
    })
    .into_response()
}

async fn spawn_bank(bank: Arc<Bank>) -> String {
    let router = Router::new()
        .route("/webhook_verification_key/get", post(key_get))
        .route("/transactions/sync", post(canned))
        .route("/transactions/get", post(canned))
        .route("/sandbox/public_token/create", post(public_token_create))
        .route("/item/public_token/exchange", post(public_token_exchange))
        .with_state(bank);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}/")
}

fn client_for(base_url: String, request_timeout: Duration) -> PlaidClient {
    PlaidClient::new(PlaidClientConfig {
        base_url,
        client_id: "client-1".into(),
        secret: SecretString::from(SECRET),
        request_timeout,
        max_webhook_age: Duration::from_secs(MAX_AGE_SECS),
    })
    .unwrap()
}

/// A bank holding the current key `KID`, a client for it and the signer.
async fn setup() -> (Arc<Bank>, PlaidClient, Signer) {
    let bank = Bank::new(false);
    let signer = Signer::generate();
    bank.add_key(signer.jwk(KID, None));
    let client = client_for(spawn_bank(Arc::clone(&bank)).await, Duration::from_secs(5));
    (bank, client, signer)
}

fn assert_unauthorized(result: Result<impl std::fmt::Debug, WebhookError>, needle: &str) {
    match result {
        Err(WebhookError::Unauthorized(reason)) => {
            assert!(reason.contains(needle), "{reason:?} lacks {needle:?}")
        }
        other => panic!("expected Unauthorized({needle}), got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Webhook verification

#[tokio::test]
async fn valid_webhook_verifies_and_parses() {
    let (bank, client, signer) = setup().await;
    let token = signer.webhook_token(KID, NOW - 5, SYNC_BODY.as_bytes());
    let verified = client
        .verify_webhook_at(&headers_with(&token), SYNC_BODY.as_bytes(), NOW)
        .await
        .unwrap();
    assert_eq!(verified.effect.external_id, "item-1");
    assert_eq!(verified.kind, "TRANSACTIONS/SYNC_UPDATES_AVAILABLE");
    assert_eq!(verified.effect.action, WebhookAction::Sync);
    assert_eq!(
        verified.body,
        serde_json::from_str::<Value>(SYNC_BODY).unwrap()
    );
    assert_eq!(bank.fetches(), 1);
}

#[tokio::test]
async fn verify_webhook_uses_the_real_clock() {
    let (_bank, client, signer) = setup().await;
    let token = signer.webhook_token(KID, chrono::Utc::now().timestamp(), SYNC_BODY.as_bytes());
    client
        .verify_webhook(&headers_with(&token), SYNC_BODY.as_bytes())
        .await
        .unwrap();
    let old = signer.webhook_token(KID, NOW, SYNC_BODY.as_bytes());
    let result = client
        .verify_webhook(&headers_with(&old), SYNC_BODY.as_bytes())
        .await;
    assert_unauthorized(result, "stale");
}

#[test]
fn only_data_changing_webhooks_trigger_sync() {
    for (webhook_type, code, expected) in [
        ("TRANSACTIONS", "SYNC_UPDATES_AVAILABLE", true),
        ("TRANSACTIONS", "DEFAULT_UPDATE", true),
        ("TRANSACTIONS", "INITIAL_UPDATE", true),
        ("TRANSACTIONS", "HISTORICAL_UPDATE", true),
        ("TRANSACTIONS", "TRANSACTIONS_REMOVED", true),
        ("ITEM", "LOGIN_REPAIRED", true),
        ("TRANSACTIONS", "RECURRING_TRANSACTIONS_UPDATE", false),
        ("ITEM", "ERROR", false),
        ("ITEM", "PENDING_EXPIRATION", false),
        ("ITEM", "SYNC_UPDATES_AVAILABLE", false),
        ("AUTH", "DEFAULT_UPDATE", false),
    ] {
        assert_eq!(
            triggers_sync(webhook_type, code),
            expected,
            "{webhook_type}/{code}"
        );
    }
}

#[tokio::test]
async fn disallowed_algorithms_are_refused_before_any_key_fetch() {
    let (bank, client, signer) = setup().await;
    let claims = json!({"iat": NOW, "request_body_sha256": body_sha256(SYNC_BODY.as_bytes())});
    for alg in ["none", "HS256", "RS256", "ES384", "es256"] {
        let header = json!({"alg": alg, "kid": KID, "typ": "JWT"});
        let mut token = signer.sign_jws(&header, &claims);
        if alg == "none" {
            // An unsigned token: empty signature segment.
            token.truncate(token.rfind('.').unwrap() + 1);
        }
        let result = client
            .verify_webhook_at(&headers_with(&token), SYNC_BODY.as_bytes(), NOW)
            .await;
        assert_unauthorized(result, &format!("{alg:?}"));
    }
    assert_eq!(bank.fetches(), 0);
}

#[tokio::test]
async fn missing_or_malformed_header_is_unauthorized() {
    let (bank, client, signer) = setup().await;
    let body = SYNC_BODY.as_bytes();
    assert_unauthorized(
        client.verify_webhook_at(&HeaderMap::new(), body, NOW).await,
        "missing",
    );
    for garbage in ["", "abc", "a.b", "a.b.c.d", "!!!.e30.AA"] {
        let result = client
            .verify_webhook_at(&headers_with(garbage), body, NOW)
            .await;
        assert!(
            matches!(result, Err(WebhookError::Unauthorized(_))),
            "{garbage:?}: {result:?}"
        );
    }
    let no_kid = signer.sign_jws(
        &json!({"alg": "ES256", "typ": "JWT"}),
        &json!({"iat": NOW, "request_body_sha256": body_sha256(body)}),
    );
    assert_unauthorized(
        client
            .verify_webhook_at(&headers_with(&no_kid), body, NOW)
            .await,
        "kid",
    );
    assert_eq!(bank.fetches(), 0);
}

#[tokio::test]
async fn unknown_kid_is_unauthorized_and_briefly_negatively_cached() {
    let (bank, client, signer) = setup().await;
    let body = SYNC_BODY.as_bytes();
    let token = signer.webhook_token("no-such-kid", NOW, body);
    for _ in 0..5 {
        assert_unauthorized(
            client
                .verify_webhook_at(&headers_with(&token), body, NOW)
                .await,
            "unknown verification key",
        );
    }
    assert_eq!(
        bank.fetches(),
        1,
        "repeats are answered from the negative cache"
    );
    let later = NOW + NEGATIVE_TTL_SECS;
    assert_unauthorized(
        client
            .verify_webhook_at(&headers_with(&token), body, later)
            .await,
        "unknown verification key",
    );
    assert_eq!(bank.fetches(), 2, "the negative entry expires");
}

#[tokio::test]
async fn expired_key_is_unauthorized() {
    let (bank, client, signer) = setup().await;
    let body = SYNC_BODY.as_bytes();
    bank.add_key(signer.jwk("kid-old", Some(NOW - 10)));
    bank.add_key(signer.jwk("kid-expiring", Some(NOW + 100)));
    let old = signer.webhook_token("kid-old", NOW, body);
    assert_unauthorized(
        client
            .verify_webhook_at(&headers_with(&old), body, NOW)
            .await,
        "expired",
    );
    // An expiry still ahead does not invalidate the key yet.
    let expiring = signer.webhook_token("kid-expiring", NOW, body);
    client
        .verify_webhook_at(&headers_with(&expiring), body, NOW)
        .await
        .unwrap();
}

#[tokio::test]
async fn stale_and_future_iat_are_unauthorized() {
    let (_bank, client, signer) = setup().await;
    let body = SYNC_BODY.as_bytes();
    let max_age = MAX_AGE_SECS as i64;
    let stale = signer.webhook_token(KID, NOW - max_age - 1, body);
    assert_unauthorized(
        client
            .verify_webhook_at(&headers_with(&stale), body, NOW)
            .await,
        "stale",
    );
    let future = signer.webhook_token(KID, NOW + max_age + 1, body);
    assert_unauthorized(
        client
            .verify_webhook_at(&headers_with(&future), body, NOW)
            .await,
        "future",
    );
    for iat in [NOW - max_age, NOW + max_age] {
        let edge = signer.webhook_token(KID, iat, body);
        client
            .verify_webhook_at(&headers_with(&edge), body, NOW)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn tampered_body_is_unauthorized() {
    let (_bank, client, signer) = setup().await;
    let token = signer.webhook_token(KID, NOW, SYNC_BODY.as_bytes());
    let tampered = SYNC_BODY.replace("item-1", "item-2");
    assert_unauthorized(
        client
            .verify_webhook_at(&headers_with(&token), tampered.as_bytes(), NOW)
            .await,
        "request_body_sha256",
    );
}

#[tokio::test]
async fn bad_signature_is_unauthorized() {
    let (_bank, client, signer) = setup().await;
    let body = SYNC_BODY.as_bytes();
    let impostor = Signer::generate();
    let forged = impostor.webhook_token(KID, NOW, body);
    assert_unauthorized(
        client
            .verify_webhook_at(&headers_with(&forged), body, NOW)
            .await,
        "signature",
    );
    // Claims swapped under a genuine signature.
    let genuine = signer.webhook_token(KID, NOW, body);
    let other_claims =
        B64URL.encode(json!({"iat": NOW, "request_body_sha256": body_sha256(b"{}")}).to_string());
    let parts: Vec<&str> = genuine.split('.').collect();
    let spliced = format!("{}.{}.{}", parts[0], other_claims, parts[2]);
    assert_unauthorized(
        client
            .verify_webhook_at(&headers_with(&spliced), b"{}", NOW)
            .await,
        "signature",
    );
}

#[tokio::test]
async fn validly_signed_malformed_body_is_malformed() {
    let (_bank, client, signer) = setup().await;
    for body in [
        &b"not json"[..],
        br#"{"webhook_type":"TRANSACTIONS","webhook_code":"DEFAULT_UPDATE"}"#,
        br#"{"webhook_type":"TRANSACTIONS","webhook_code":7,"item_id":"i"}"#,
        b"[]",
    ] {
        let token = signer.webhook_token(KID, NOW, body);
        let result = client
            .verify_webhook_at(&headers_with(&token), body, NOW)
            .await;
        assert!(
            matches!(result, Err(WebhookError::Malformed(_))),
            "{}: {result:?}",
            String::from_utf8_lossy(body)
        );
    }
}

#[tokio::test]
async fn key_is_fetched_once_then_refreshed_after_ttl_to_learn_expiry() {
    let (bank, client, signer) = setup().await;
    let body = SYNC_BODY.as_bytes();
    let token = signer.webhook_token(KID, NOW, body);
    for i in 0..50 {
        client
            .verify_webhook_at(&headers_with(&token), body, NOW + i % 3)
            .await
            .unwrap();
    }
    assert_eq!(bank.fetches(), 1);

    // Plaid rotates: the key now carries an expiry. Within the TTL we do not ask...
    let rotated_at = NOW + KEY_TTL_SECS - 1;
    bank.add_key(signer.jwk(KID, Some(rotated_at)));
    let before = signer.webhook_token(KID, rotated_at, body);
    client
        .verify_webhook_at(&headers_with(&before), body, rotated_at)
        .await
        .unwrap();
    assert_eq!(bank.fetches(), 1);
    // ...after it we re-fetch, learn the expiry and refuse the key.
    let after_ttl = NOW + KEY_TTL_SECS;
    let late = signer.webhook_token(KID, after_ttl, body);
    assert_unauthorized(
        client
            .verify_webhook_at(&headers_with(&late), body, after_ttl)
            .await,
        "expired",
    );
    assert_eq!(bank.fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_fetch() {
    const CALLERS: usize = 16;
    let bank = Bank::new(true);
    let signer = Signer::generate();
    bank.add_key(signer.jwk(KID, None));
    let client = Arc::new(client_for(
        spawn_bank(Arc::clone(&bank)).await,
        Duration::from_secs(5),
    ));
    let token = signer.webhook_token(KID, NOW, SYNC_BODY.as_bytes());

    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let client = Arc::clone(&client);
            let headers = headers_with(&token);
            tokio::spawn(async move {
                client
                    .verify_webhook_at(&headers, SYNC_BODY.as_bytes(), NOW)
                    .await
            })
        })
        .collect();
    // The bank holds the fetch until every caller is parked on it.
    tokio::time::timeout(Duration::from_secs(10), async {
        while client.verifier().keys().inflight_waiters(KID) < CALLERS {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("all callers join the in-flight fetch");
    bank.key_gate.add_permits(Semaphore::MAX_PERMITS);
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(bank.fetches(), 1);
}

#[tokio::test]
async fn provider_down_is_key_unavailable_and_a_cached_key_outlives_it() {
    let (bank, client, signer) = setup().await;
    let body = SYNC_BODY.as_bytes();
    let token = signer.webhook_token(KID, NOW, body);

    bank.keys_down.store(true, Ordering::SeqCst);
    let result = client
        .verify_webhook_at(&headers_with(&token), body, NOW)
        .await;
    assert!(
        matches!(result, Err(WebhookError::KeyUnavailable(_))),
        "{result:?}"
    );
    // An outage is not remembered as "unknown kid": the next try fetches again.
    bank.keys_down.store(false, Ordering::SeqCst);
    client
        .verify_webhook_at(&headers_with(&token), body, NOW)
        .await
        .unwrap();
    assert_eq!(bank.fetches(), 2);

    // Down again past the TTL: the cached key keeps working (stale-if-error)...
    bank.keys_down.store(true, Ordering::SeqCst);
    let after_ttl = NOW + KEY_TTL_SECS;
    let token = signer.webhook_token(KID, after_ttl, body);
    client
        .verify_webhook_at(&headers_with(&token), body, after_ttl)
        .await
        .unwrap();
    // ...but not forever.
    let too_late = NOW + STALE_IF_ERROR_SECS;
    let token = signer.webhook_token(KID, too_late, body);
    let result = client
        .verify_webhook_at(&headers_with(&token), body, too_late)
        .await;
    assert!(
        matches!(result, Err(WebhookError::KeyUnavailable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn random_kids_cannot_hammer_the_provider() {
    let (bank, client, signer) = setup().await;
    let body = SYNC_BODY.as_bytes();
    let limit = MAX_NEW_KID_FETCHES_PER_SEC as usize;
    let (mut unknown, mut refused) = (0, 0);
    for i in 0..limit + 5 {
        let token = signer.webhook_token(&format!("random-{i}"), NOW, body);
        match client
            .verify_webhook_at(&headers_with(&token), body, NOW)
            .await
        {
            Err(WebhookError::Unauthorized(_)) => unknown += 1,
            Err(WebhookError::KeyUnavailable(_)) => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((unknown, refused), (limit, 5));
    assert_eq!(bank.fetches(), limit);
    // The real key is still learned once the second is over.
    let token = signer.webhook_token(KID, NOW + 1, body);
    client
        .verify_webhook_at(&headers_with(&token), body, NOW + 1)
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// Client calls

#[tokio::test]
async fn plaid_error_body_maps_to_api_error() {
    let (bank, client, _signer) = setup().await;
    let err = wire::PlaidError {
        error_type: "INVALID_INPUT".into(),
        error_code: wire::INVALID_FIELD.into(),
        error_message: "cursor not associated with access_token".into(),
        display_message: None,
        request_id: "req-42".into(),
        causes: vec![],
        status: Some(400),
        documentation_url: None,
        suggested_action: None,
    };
    bank.reply_with(Reply::Json(
        StatusCode::BAD_REQUEST,
        serde_json::to_string(&err).unwrap(),
    ));
    let result = client
        .sync_page(&AccessToken::new("access-1"), Some("c-9"), 10)
        .await;
    match result {
        Err(
            ref e @ ProviderError::Api {
                status,
                ref error_type,
                ref code,
                ref message,
                ref request_id,
                class,
            },
        ) => {
            assert_eq!(status, 400);
            assert_eq!(error_type, "INVALID_INPUT");
            assert_eq!(code, wire::INVALID_FIELD);
            assert_eq!(message, "cursor not associated with access_token");
            assert_eq!(request_id.as_deref(), Some("req-42"));
            assert_eq!(class, ErrorClass::CursorRejected);
            assert_eq!(e.class(), ErrorClass::CursorRejected);
        }
        other => panic!("{other:?}"),
    }

    bank.reply_with(Reply::Json(
        StatusCode::BAD_GATEWAY,
        "<html>bad gateway</html>".into(),
    ));
    let err = client
        .sync_page(&AccessToken::new("access-1"), None, 10)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::Api { status: 502, code, .. } if code == "HTTP_502"),
        "{err:?}"
    );
}

#[tokio::test]
async fn sync_page_preserves_rows_verbatim_and_sends_credentials() {
    let (bank, client, _signer) = setup().await;
    let added = json!({
        "transaction_id": "tx-1",
        "account_id": "acc-1",
        "amount": 12.34,
        "date": "2024-03-05",
        "name": "Coffee",
        "pending": false,
        "future_field": {"nested": [1, 2, {"deep": null}]},
        "counterparties": [{"name": "Blue Bottle", "confidence_level": "HIGH"}]
    });
    let modified =
        json!({"transaction_id": "tx-0", "date": "2024-02-29", "amount": -1e-7, "x_unknown": true});
    let response = json!({
        "accounts": [],
        "added": [added],
        "modified": [modified],
        "removed": [{"transaction_id": "tx-gone", "account_id": "acc-1"}],
        "next_cursor": "cursor-2",
        "has_more": true,
        "transactions_update_status": "HISTORICAL_UPDATE_COMPLETE",
        "request_id": "req-sync"
    });
    bank.reply_with(Reply::Json(StatusCode::OK, response.to_string()));
    let page = client
        .sync_page(&AccessToken::new("access-1"), None, 7)
        .await
        .unwrap();
    assert_eq!(page.added.len(), 1);
    assert_eq!(page.added[0].id, "tx-1");
    assert_eq!(
        page.added[0].date,
        NaiveDate::from_ymd_opt(2024, 3, 5).unwrap()
    );
    assert_eq!(page.added[0].body, added);
    assert_eq!(page.modified[0].id, "tx-0");
    assert_eq!(page.modified[0].body, modified);
    assert_eq!(page.removed, vec!["tx-gone".to_owned()]);
    assert_eq!(page.next_cursor, "cursor-2");
    assert!(page.has_more);
    assert_eq!(page.request_id, "req-sync");

    let (headers, request) = bank.last_request();
    assert_eq!(headers["plaid-client-id"], "client-1");
    assert_eq!(headers["plaid-secret"], SECRET);
    assert_eq!(request["access_token"], "access-1");
    assert_eq!(request["count"], 7);
    assert!(
        request.get("cursor").is_none(),
        "no cursor means omitted: {request}"
    );

    bank.reply_with(Reply::Json(StatusCode::OK, response.to_string()));
    client
        .sync_page(&AccessToken::new("access-1"), Some("cursor-1"), 7)
        .await
        .unwrap();
    assert_eq!(bank.last_request().1["cursor"], "cursor-1");
}

#[tokio::test]
async fn rows_without_id_or_valid_date_are_decode_errors() {
    let (bank, client, _signer) = setup().await;
    for row in [
        json!({"transaction_id": "tx-1"}),
        json!({"date": "2024-03-05"}),
        json!({"transaction_id": "tx-1", "date": "05/03/2024"}),
    ] {
        let response = json!({
            "accounts": [], "added": [row], "modified": [], "removed": [],
            "next_cursor": "c", "has_more": false,
            "transactions_update_status": "HISTORICAL_UPDATE_COMPLETE", "request_id": "r"
        });
        bank.reply_with(Reply::Json(StatusCode::OK, response.to_string()));
        let result = client.sync_page(&AccessToken::new("a"), None, 1).await;
        assert!(
            matches!(result, Err(ProviderError::Decode(_))),
            "{row}: {result:?}"
        );
    }
}

#[tokio::test]
async fn window_page_sends_dates_and_paging() {
    let (bank, client, _signer) = setup().await;
    let row = json!({"transaction_id": "tx-9", "date": "2024-01-31", "amount": 5, "extra": "kept"});
    let response = json!({
        "accounts": [],
        "transactions": [row],
        "total_transactions": 41,
        "item": {"item_id": "item-1"},
        "request_id": "req-get"
    });
    bank.reply_with(Reply::Json(StatusCode::OK, response.to_string()));
    let start = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
    let end = NaiveDate::from_ymd_opt(2024, 1, 31).unwrap();
    let page = client
        .window_page(&AccessToken::new("access-1"), start, end, 40, 25)
        .await
        .unwrap();
    assert_eq!(page.total, 41);
    assert_eq!(page.request_id, "req-get");
    assert_eq!(page.transactions[0].body, row);
    let (_, request) = bank.last_request();
    assert_eq!(request["start_date"], "2024-01-01");
    assert_eq!(request["end_date"], "2024-01-31");
    assert_eq!(request["options"], json!({"count": 25, "offset": 40}));
}

#[tokio::test]
async fn slow_or_unreachable_provider_is_transport_error() {
    let bank = Bank::new(false);
    let base = spawn_bank(Arc::clone(&bank)).await;
    let client = client_for(base, Duration::from_millis(200));
    bank.reply_with(Reply::Hang);
    let started = Instant::now();
    let err = client
        .sync_page(&AccessToken::new("a"), None, 1)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::Transport(m) if m.contains("timed out")),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // A port nobody listens on any more.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = client_for(format!("http://{addr}"), Duration::from_secs(5));
    let err = client
        .sync_page(&AccessToken::new("a"), None, 1)
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Transport(_)), "{err:?}");
}

#[tokio::test]
async fn sandbox_link_item_exchanges_a_public_token() {
    let (_bank, client, _signer) = setup().await;
    let (item_id, token) = client
        .sandbox_link_item("ins_109508", Some("http://hook"))
        .await
        .unwrap();
    assert_eq!(item_id, "item-linked");
    assert_eq!(
        token.expose(),
        "access-public-sandbox-ins_109508-http://hook"
    );
}

#[test]
fn secret_is_not_in_debug_output_and_bad_urls_are_refused() {
    let config = PlaidClientConfig {
        base_url: "http://127.0.0.1:1".into(),
        client_id: "client-1".into(),
        secret: SecretString::from(SECRET),
        request_timeout: Duration::from_secs(1),
        max_webhook_age: Duration::from_secs(60),
    };
    assert!(!format!("{config:?}").contains(SECRET));
    let client = PlaidClient::new(config.clone()).unwrap();
    assert!(!format!("{client:?}").contains(SECRET));
    let err = PlaidClient::new(PlaidClientConfig {
        base_url: "ftp://x".into(),
        ..config
    })
    .unwrap_err();
    assert!(err.to_string().contains("base url"), "{err}");
}

/// Throughput of verification with a cached key, on one task and on two in parallel.
/// Run with `cargo test --lib plaid::tests::verify_throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn verify_throughput() {
    const ITERATIONS: usize = 20_000;
    let (bank, client, signer) = setup().await;
    let client = Arc::new(client);
    let body = SYNC_BODY.as_bytes();
    let headers = headers_with(&signer.webhook_token(KID, NOW, body));
    client.verify_webhook_at(&headers, body, NOW).await.unwrap();

    let run = |client: Arc<PlaidClient>, headers: HeaderMap, n: usize| async move {
        for _ in 0..n {
            client
                .verify_webhook_at(&headers, SYNC_BODY.as_bytes(), NOW)
                .await
                .unwrap();
        }
    };
    let started = Instant::now();
    run(Arc::clone(&client), headers.clone(), ITERATIONS).await;
    let one = ITERATIONS as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let tasks: Vec<_> = (0..2)
        .map(|_| tokio::spawn(run(Arc::clone(&client), headers.clone(), ITERATIONS / 2)))
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let two = ITERATIONS as f64 / started.elapsed().as_secs_f64();
    println!("cached-key verifications: {one:.0}/s on one task, {two:.0}/s on two tasks");
    assert_eq!(bank.fetches(), 1);
}
