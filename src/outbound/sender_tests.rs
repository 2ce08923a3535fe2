//! The sender against local receivers on port 0, driven with an injected clock:
//! signatures verified by an independent HMAC, retries with backoff, exactly-once
//! delivery, the max age (through the alerts' destination), a record left by the
//! alert-only outbox, and routing by destination.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use chrono::{DateTime, TimeZone, Utc};
use rand::SeedableRng;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use super::*;
use crate::config::AlertSettings;
use crate::domain::incidents::{Incident, IncidentKind, OpenIncident};
use crate::domain::AccountId;
use crate::outbound::signing::decode_secret;
use crate::outbound::{alerts, Destinations};
use crate::store::{Destination, Durability, IncidentStore, OutboxStore};
use crate::store::{SledStore, SledStoreConfig};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

/// HMAC-SHA256 written out from RFC 2104 with sha2, independent of `ring`.
fn reference_hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Verifies a Standard Webhooks delivery the way a receiver would.
fn verify(headers: &HeaderMap, body: &[u8]) -> bool {
    verify_with(KEY, headers, body)
}

/// [`verify`] with another key.
fn verify_with(key: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let signed = format!(
        "{}.{}.{}",
        text("webhook-id"),
        text("webhook-timestamp"),
        String::from_utf8_lossy(body)
    );
    let expected =
        base64::engine::general_purpose::STANDARD.encode(reference_hmac(key, signed.as_bytes()));
    text("webhook-signature")
        .split(' ')
        .any(|sig| sig.strip_prefix("v1,") == Some(expected.as_str()))
}

/// One received request: its headers and body.
type Delivery = (HeaderMap, Vec<u8>);

#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<Vec<Delivery>>>,
    fail_first: Arc<Mutex<u32>>,
}

async fn spawn_receiver(fail_first: u32) -> (String, Receiver) {
    let receiver = Receiver {
        fail_first: Arc::new(Mutex::new(fail_first)),
        ..Receiver::default()
    };
    let state = receiver.clone();
    let app = axum::Router::new().route(
        "/alerts",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                state
                    .seen
                    .lock()
                    .expect("lock")
                    .push((headers, body.to_vec()));
                let mut left = state.fail_first.lock().expect("lock");
                if *left > 0 {
                    *left -= 1;
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/alerts", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, receiver)
}

fn settings(url: &str) -> AlertSettings {
    AlertSettings {
        url: url.to_string(),
        secret: SecretString::from(format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(KEY)
        )),
        request_timeout: Duration::from_secs(5),
        retry_initial: Duration::from_secs(10),
        retry_max: Duration::from_secs(60),
        max_age: Duration::from_secs(3600),
    }
}

/// The alerts' sender, as the app builds it from `settings`.
fn alert_sender(store: Arc<SledStore>, settings: &AlertSettings) -> Sender {
    let endpoint = alerts::endpoint(settings)
        .expect("builds")
        .expect("configured");
    let error_wait = endpoint.retry_initial;
    let destinations = Destinations::with_alerts(endpoint);
    Sender::new(store, Arc::new(destinations), error_wait).expect("builds")
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("valid time")
}

fn open_store(dir: &tempfile::TempDir) -> Arc<SledStore> {
    crate::store::when_released(dir.path(), || {
        SledStore::open(SledStoreConfig {
            data_dir: dir.path().to_path_buf(),
            cache_capacity_bytes: 8 * 1024 * 1024,
            group_commit_window: Duration::ZERO,
        })
    })
}

fn raise(store: &SledStore, at: DateTime<Utc>) -> Incident {
    store
        .open_incident(&OpenIncident {
            subject: AccountId("acc_alert".into()).into(),
            kind: IncidentKind::NeedsReauth,
            details: serde_json::json!({ "code": "ITEM_LOGIN_REQUIRED" }),
            at,
            notify: true,
        })
        .expect("open")
}

#[test]
fn signatures_match_an_independent_hmac_and_a_tampered_body_fails() {
    let body = br#"{"type":"incident.opened"}"#;
    let signature = sign(KEY, "msg_1", 1_700_000_000, body);
    let mut headers = HeaderMap::new();
    headers.insert("webhook-id", "msg_1".parse().expect("header"));
    headers.insert("webhook-timestamp", "1700000000".parse().expect("header"));
    headers.insert("webhook-signature", signature.parse().expect("header"));
    assert!(verify(&headers, body));
    assert!(!verify(&headers, br#"{"type":"incident.resolved"}"#));
    assert!(decode_secret(&SecretString::from("nope".to_string())).is_none());
    assert!(decode_secret(&SecretString::from("whsec_!!!".to_string())).is_none());
}

#[tokio::test]
async fn a_failing_receiver_gets_retries_with_backoff_then_exactly_one_delivery() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_store(&dir);
    let (url, receiver) = spawn_receiver(2).await;
    let sender = alert_sender(store.clone(), &settings(&url));
    let incident = raise(&store, t0());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);

    // Attempt 1 fails: rescheduled within the first backoff ceiling.
    let pass = sender.pass(t0(), &mut rng).await.expect("pass");
    assert_eq!((pass.delivered, pass.failed), (0, 1));
    let due1 = pass.next_due.expect("rescheduled");
    assert!(
        due1 > t0() && due1 <= t0() + chrono::Duration::seconds(10),
        "{due1}"
    );

    // Not due yet: nothing is sent.
    let early = sender
        .pass(due1 - chrono::Duration::milliseconds(1), &mut rng)
        .await
        .expect("pass");
    assert_eq!(
        early,
        Pass {
            next_due: Some(due1),
            ..Pass::default()
        }
    );
    assert_eq!(receiver.seen.lock().expect("lock").len(), 1);

    // Attempt 2 fails: the ceiling doubled.
    let pass = sender.pass(due1, &mut rng).await.expect("pass");
    assert_eq!(pass.failed, 1);
    let due2 = pass.next_due.expect("rescheduled");
    assert!(
        due2 > due1 && due2 <= due1 + chrono::Duration::seconds(20),
        "{due2}"
    );
    let record = &store.pending_outbox(10).expect("outbox")[0];
    assert_eq!(record.attempts, 2);
    assert!(
        record.last_error.as_deref().unwrap_or("").contains("503"),
        "{record:?}"
    );

    // Attempt 3 is delivered, once; the outbox is empty and stays so.
    let pass = sender.pass(due2, &mut rng).await.expect("pass");
    assert_eq!((pass.delivered, pass.failed, pass.next_due), (1, 0, None));
    let later = sender
        .pass(due2 + chrono::Duration::hours(1), &mut rng)
        .await
        .expect("pass");
    assert_eq!(later, Pass::default());
    assert!(store.pending_outbox(10).expect("outbox").is_empty());

    let seen = receiver.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3, "two failures, one delivery");
    let ids: Vec<_> = seen.iter().map(|(h, _)| h["webhook-id"].clone()).collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "stable webhook-id: {ids:?}"
    );
    for (headers, body) in &seen {
        assert!(verify(headers, body), "every attempt is signed");
        let mut tampered = body.clone();
        tampered.push(b' ');
        assert!(!verify(headers, &tampered));
    }
    let (headers, body) = &seen[2];
    assert_eq!(
        headers["webhook-timestamp"],
        due2.timestamp().to_string().as_str()
    );
    let event: serde_json::Value = serde_json::from_slice(body).expect("json");
    assert_eq!(event["type"], "incident.opened");
    assert_eq!(event["data"]["id"], incident.id);
    assert_eq!(event["data"]["kind"], "needs_reauth");
    assert_eq!(sender.counters().delivered.load(Ordering::Relaxed), 1);
    assert_eq!(sender.counters().failed_attempts.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn undelivered_alerts_survive_a_restart_and_are_dropped_past_their_max_age() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (url, receiver) = spawn_receiver(u32::MAX).await;
    {
        let store = open_store(&dir);
        raise(&store, t0());
        store.durable().await.expect("durable");
        store.shutdown().await.expect("shutdown");
    }
    let store = open_store(&dir);
    let sender = alert_sender(store.clone(), &settings(&url));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let pass = sender.pass(t0(), &mut rng).await.expect("pass");
    assert_eq!(
        pass.failed, 1,
        "the alert from before the restart was tried"
    );
    let pass = sender
        .pass(t0() + chrono::Duration::hours(2), &mut rng)
        .await
        .expect("pass");
    assert_eq!((pass.dropped, pass.failed), (1, 0));
    assert!(store.pending_outbox(10).expect("outbox").is_empty());
    assert_eq!(receiver.seen.lock().expect("lock").len(), 1);
}

/// A receiver outage with more alerts than one pass takes: the first batch fails and
/// waits out its backoff, and the alerts behind it are tried on the very next pass
/// instead of being starved by not-yet-due ones until their max age drops them.
#[tokio::test]
async fn alerts_behind_a_failing_batch_are_still_tried_during_an_outage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_store(&dir);
    let (url, receiver) = spawn_receiver(u32::MAX).await;
    let sender = alert_sender(store.clone(), &settings(&url));
    let behind = 30;
    for n in 0..BATCH + behind {
        store
            .open_incident(&OpenIncident {
                subject: AccountId(format!("acc_outage_{n}")).into(),
                kind: IncidentKind::SyncFailed,
                details: serde_json::json!({ "n": n }),
                at: t0(),
                notify: true,
            })
            .expect("open");
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);

    let first = sender.pass(t0(), &mut rng).await.expect("pass");
    assert_eq!(first.failed, BATCH as u64);
    assert_eq!(
        first.next_due,
        Some(t0()),
        "more alerts are due now: the sender must come back at once"
    );
    // 1 ms later: the first batch waits out its backoff (at least 10 ms); the rest is due.
    let second = sender
        .pass(t0() + chrono::Duration::milliseconds(1), &mut rng)
        .await
        .expect("pass");
    assert_eq!(second.failed, behind as u64, "{second:?}");
    assert!(second.next_due.expect("all rescheduled") > t0() + chrono::Duration::milliseconds(1));
    let ids: std::collections::HashSet<String> = receiver
        .seen
        .lock()
        .expect("lock")
        .iter()
        .map(|(headers, _)| headers["webhook-id"].to_str().expect("ascii").to_string())
        .collect();
    assert_eq!(ids.len(), BATCH + behind, "every alert was tried once");
    assert_eq!(
        store.pending_outbox(1000).expect("outbox").len(),
        BATCH + behind
    );
}

#[test]
fn origin_drops_path_and_query() {
    assert_eq!(
        crate::outbound::origin_of("https://hooks.example.com:8443/services/T0/B0/SECRET?token=x"),
        "https://hooks.example.com:8443"
    );
    assert_eq!(crate::outbound::origin_of("not a url"), "<invalid url>");
}

/// The alert body as the alert-only sender built it: this struct, serialized.
#[derive(serde::Serialize)]
struct OldEvent<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    timestamp: DateTime<Utc>,
    data: &'a Incident,
}

/// An alert written by the alert-only outbox (its record encoding, by hand: version
/// byte, then the JSON of `{id, event_type, incident, created_at, next_attempt_at,
/// attempts, last_error}`) is delivered by the generic sender, signed, with the body
/// the old sender sent, and leaves the outbox.
#[tokio::test]
async fn an_alert_left_by_the_alert_only_outbox_is_delivered_with_its_old_body() {
    let dir = tempfile::tempdir().expect("temp dir");
    let incident = Incident {
        id: 3,
        kind: IncidentKind::NeedsReauth,
        severity: IncidentKind::NeedsReauth.severity(),
        account_id: Some(AccountId("acc_old".into())),
        operation_id: None,
        opened_at: t0(),
        updated_at: t0(),
        resolved_at: None,
        occurrences: 1,
        details: serde_json::json!({ "code": "ITEM_LOGIN_REQUIRED", "attempts": 2 }),
    };
    {
        let db = crate::store::open_raw(dir.path());
        let record = serde_json::json!({
            "id": 7,
            "event_type": "incident.opened",
            "incident": incident,
            "created_at": t0(),
            "next_attempt_at": t0() + chrono::Duration::seconds(30),
            "attempts": 1,
            "last_error": "receiver answered 503",
        });
        let mut bytes = vec![1u8];
        bytes.extend(serde_json::to_vec(&record).expect("json"));
        let outbox = db.open_tree("outbox").expect("outbox tree");
        outbox.insert(7u64.to_be_bytes(), bytes).expect("insert");
        db.flush().expect("flush");
    }
    let store = open_store(&dir);
    let (url, receiver) = spawn_receiver(0).await;
    let sender = alert_sender(store.clone(), &settings(&url));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);

    let early = sender.pass(t0(), &mut rng).await.expect("pass");
    assert_eq!(early.next_due, Some(t0() + chrono::Duration::seconds(30)));
    let pass = sender
        .pass(t0() + chrono::Duration::seconds(30), &mut rng)
        .await
        .expect("pass");
    assert_eq!((pass.delivered, pass.failed, pass.next_due), (1, 0, None));
    assert!(store.pending_outbox(10).expect("outbox").is_empty());

    let seen = receiver.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    let (headers, body) = &seen[0];
    assert_eq!(headers["webhook-id"], "msg_acctor_7");
    assert!(verify(headers, body));
    let old_body = serde_json::to_vec(&OldEvent {
        event_type: "incident.opened",
        timestamp: t0(),
        data: &incident,
    })
    .expect("json");
    assert_eq!(
        String::from_utf8_lossy(body),
        String::from_utf8_lossy(&old_body)
    );
}

/// A new alert's body is, byte for byte, what the alert-only sender sent.
#[tokio::test]
async fn a_new_alerts_body_is_the_old_senders_bytes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_store(&dir);
    let (url, receiver) = spawn_receiver(0).await;
    let sender = alert_sender(store.clone(), &settings(&url));
    let incident = raise(&store, t0());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    assert_eq!(
        sender.pass(t0(), &mut rng).await.expect("pass").delivered,
        1
    );
    let old_body = serde_json::to_vec(&OldEvent {
        event_type: "incident.opened",
        timestamp: t0(),
        data: &incident,
    })
    .expect("json");
    let seen = receiver.seen.lock().expect("lock").clone();
    assert_eq!(
        String::from_utf8_lossy(&seen[0].1),
        String::from_utf8_lossy(&old_body)
    );
}

/// Endpoints for two destinations, as a second user of the outbox would add them:
/// alerts to one receiver, `Test("hooks")` to another with its own key; any other test
/// destination has none.
struct TwoEndpoints {
    alerts: Arc<Endpoint>,
    hooks: Arc<Endpoint>,
}

impl Endpoints for TwoEndpoints {
    fn endpoint(&self, destination: &Destination) -> Option<Arc<Endpoint>> {
        match destination {
            Destination::Alerts => Some(self.alerts.clone()),
            Destination::Test(name) if name == "hooks" => Some(self.hooks.clone()),
            Destination::Test(_) => None,
        }
    }
}

#[tokio::test]
async fn each_destination_is_delivered_to_its_own_endpoint_with_its_own_key() {
    const HOOKS_KEY: &[u8] = b"hooks-key-hooks-key-hooks-key-32";
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_store(&dir);
    let (alerts_url, alerts_receiver) = spawn_receiver(0).await;
    let (hooks_url, hooks_receiver) = spawn_receiver(0).await;
    let alerts = alerts::endpoint(&settings(&alerts_url))
        .expect("builds")
        .expect("configured");
    let hooks = Endpoint {
        url: hooks_url,
        key: secrecy::SecretBox::new(Box::new(HOOKS_KEY.to_vec())),
        noun: "hook",
        ..alerts::endpoint(&settings(&alerts_url))
            .expect("builds")
            .expect("configured")
    };
    let endpoints = TwoEndpoints {
        alerts: Arc::new(alerts),
        hooks: Arc::new(hooks),
    };
    let sender =
        Sender::new(store.clone(), Arc::new(endpoints), Duration::from_secs(1)).expect("builds");
    let incident = raise(&store, t0());
    let hook_id = store.enqueue_for_test(
        Destination::Test("hooks".into()),
        &serde_json::json!({ "hello": "subscriber" }),
        t0(),
    );
    let orphan_id = store.enqueue_for_test(
        Destination::Test("nowhere".into()),
        &serde_json::json!({}),
        t0(),
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);

    let pass = sender.pass(t0(), &mut rng).await.expect("pass");
    assert_eq!((pass.delivered, pass.failed, pass.dropped), (2, 0, 0));
    let to_alerts = alerts_receiver.seen.lock().expect("lock").clone();
    let to_hooks = hooks_receiver.seen.lock().expect("lock").clone();
    assert_eq!((to_alerts.len(), to_hooks.len()), (1, 1));
    let alert: serde_json::Value = serde_json::from_slice(&to_alerts[0].1).expect("json");
    assert_eq!(alert["data"]["id"], incident.id);
    assert!(verify(&to_alerts[0].0, &to_alerts[0].1));
    let (headers, body) = &to_hooks[0];
    assert_eq!(body.as_slice(), br#"{"hello":"subscriber"}"#);
    assert_eq!(
        headers["webhook-id"],
        format!("msg_acctor_{hook_id}").as_str()
    );
    assert!(
        verify_with(HOOKS_KEY, headers, body),
        "signed with its own key"
    );
    assert!(!verify(headers, body), "not with the alerts' key");

    // A destination without an endpoint is neither attempted nor dropped: it waits.
    let pending = store.pending_outbox(10).expect("outbox");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, orphan_id);
    assert_eq!(pending[0].attempts, 0);
    assert_eq!(pass.next_due, Some(t0() + chrono::Duration::seconds(60)));
}
