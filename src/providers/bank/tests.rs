//! The bank client against the sandbox bank on loopback (port 0): idempotency as the
//! client sees it, answers decoded, and every failure mapped to the class acctor acts
//! on. A few cases need an answer the sandbox never gives (an undecodable 200): a tiny
//! server of their own serves it.

use std::time::Duration;

use axum::routing::any;
use tokio::net::TcpListener;

use super::*;
use crate::providers::{ErrorClass, ProviderError};
use crate::sandbox::bank_test_support::{iban_is_valid, BankEnv, API_KEY};
use crate::sandbox::{BankFaultsUpdate, MarketUpdate, Outcome};

fn client(base_url: &str, api_key: &str) -> BankClient {
    BankClient::new(BankClientConfig {
        base_url: base_url.to_owned(),
        api_key: api_key.to_owned(),
        timeout: Duration::from_secs(10),
        legacy_timeout: Duration::from_secs(10),
    })
    .unwrap()
}

fn application(customer_id: &str, market: &str) -> OpeningRequest {
    OpeningRequest {
        customer_id: customer_id.to_owned(),
        market: market.to_owned(),
        segment: "retail".to_owned(),
        legal_name: "Ada Lovelace".to_owned(),
        email: Some("ada@example.com".to_owned()),
        registration_number: None,
    }
}

/// The status, code and class of an API error; panics on anything else.
fn api_failure(err: ProviderError) -> (u16, String, ErrorClass) {
    match err {
        ProviderError::Api {
            status,
            code,
            class,
            request_id,
            ..
        } => {
            assert!(
                request_id.is_some(),
                "the sandbox always sends x-request-id"
            );
            (status, code, class)
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Makes the bank finish every webhook-free step before the create answers, so an
/// opening with delay 0 is decided when `open_account` returns.
fn decide_before_answering(env: &BankEnv) {
    env.sandbox
        .bank()
        .set_faults(BankFaultsUpdate {
            webhook_before_response: Some(true),
            ..Default::default()
        })
        .unwrap();
}

#[tokio::test]
async fn creating_is_idempotent_by_key_and_a_reused_key_is_refused() {
    let env = BankEnv::start(1, None).await;
    let bank = client(&env.base_url(), API_KEY);
    let first = bank
        .open_account("req-1", &application("cus-1", "NL"))
        .await
        .unwrap();
    assert_eq!(first.status, BankStatus::Initiated);
    assert!(first.tracking_id.starts_with("opn_"));
    let again = bank
        .open_account("req-1", &application("cus-1", "NL"))
        .await
        .unwrap();
    assert_eq!(again.tracking_id, first.tracking_id);

    let other = bank
        .open_account("req-2", &application("cus-1", "NL"))
        .await
        .unwrap();
    assert_ne!(other.tracking_id, first.tracking_id);

    let reused = bank
        .open_account("req-1", &application("cus-2", "NL"))
        .await
        .unwrap_err();
    assert_eq!(
        api_failure(reused),
        (422, "idempotency_key_reused".into(), ErrorClass::Permanent)
    );

    let stats = env.sandbox.bank().stats();
    assert_eq!(stats.openings, 2);
    assert_eq!(stats.creates_by_key["req-1"], 3);
}

#[tokio::test]
async fn the_status_of_an_opening_carries_its_account_once_completed() {
    let env = BankEnv::start(2, None).await;
    decide_before_answering(&env);
    let bank = client(&env.base_url(), API_KEY);
    let accepted = bank
        .open_account("req-1", &application("cus-1", "DE"))
        .await
        .unwrap();
    let report = bank.opening_status(&accepted.tracking_id).await.unwrap();
    assert_eq!(report.tracking_id, accepted.tracking_id);
    assert_eq!(report.status, BankStatus::Completed);
    let iban = report.iban.unwrap();
    assert!(iban.starts_with("DE") && iban_is_valid(&iban), "{iban}");
    assert_eq!(report.bic.as_deref(), Some("COBADEFFXXX"));

    // A tracking id with characters that mean something in a path is escaped, and
    // unknown.
    let missing = bank.opening_status("opn_../x?y").await.unwrap_err();
    assert_eq!(
        api_failure(missing),
        (404, "not_found".into(), ErrorClass::Permanent)
    );
}

#[tokio::test]
async fn the_legacy_opening_answers_the_decision_and_is_idempotent() {
    let env = BankEnv::start(3, None).await;
    env.sandbox
        .bank()
        .set_market(
            "FR",
            MarketUpdate {
                outcome: Some(Outcome::Reject),
                ..Default::default()
            },
        )
        .unwrap();
    let bank = client(&env.base_url(), API_KEY);
    let completed = bank
        .open_account_sync("legacy-1", &application("cus-1", "NL"))
        .await
        .unwrap();
    assert_eq!(completed.status, BankStatus::Completed);
    let iban = completed.iban.clone().unwrap();
    assert!(iban_is_valid(&iban), "{iban}");
    let again = bank
        .open_account_sync("legacy-1", &application("cus-1", "NL"))
        .await
        .unwrap();
    assert_eq!(again, completed);

    let rejected = bank
        .open_account_sync("legacy-2", &application("cus-2", "FR"))
        .await
        .unwrap();
    assert_eq!(rejected.status, BankStatus::Rejected);
    assert!(rejected.reason.is_some());
    assert_eq!(rejected.iban, None);
    let stats = env.sandbox.bank().stats();
    assert_eq!((stats.legacy_calls, stats.legacy_openings), (3, 2));
}

#[tokio::test]
async fn a_legacy_opening_that_never_decides_times_out_as_transient() {
    let env = BankEnv::start(4, None).await;
    env.sandbox
        .bank()
        .set_market(
            "NL",
            MarketUpdate {
                outcome: Some(Outcome::Never),
                ..Default::default()
            },
        )
        .unwrap();
    let bank = BankClient::new(BankClientConfig {
        base_url: env.base_url(),
        api_key: API_KEY.to_owned(),
        timeout: Duration::from_millis(300),
        legacy_timeout: Duration::from_millis(300),
    })
    .unwrap();
    let err = bank
        .open_account_sync("legacy-1", &application("cus-1", "NL"))
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Transport(_)), "{err:?}");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert_eq!(err.class(), ErrorClass::Transient);
}

#[tokio::test]
async fn a_card_is_issued_once_per_key() {
    let env = BankEnv::start(5, None).await;
    decide_before_answering(&env);
    let bank = client(&env.base_url(), API_KEY);
    let accepted = bank
        .open_account("req-1", &application("cus-1", "NL"))
        .await
        .unwrap();
    let iban = bank
        .opening_status(&accepted.tracking_id)
        .await
        .unwrap()
        .iban
        .unwrap();
    let request = CardRequest {
        customer_id: "cus-1".into(),
        iban: iban.clone(),
    };
    let card = bank.issue_virtual_card("step-1", &request).await.unwrap();
    assert!(card.card_id.starts_with("card_"));
    assert_eq!(card.last4.len(), 4);
    assert_eq!(
        bank.issue_virtual_card("step-1", &request).await.unwrap(),
        card
    );
    let stats = env.sandbox.bank().stats();
    assert_eq!(stats.cards_issued_by_customer["cus-1"], 1);
    assert_eq!(stats.card_ids_by_key["step-1"], vec![card.card_id.clone()]);

    // A card for an account the customer does not hold is refused for good.
    let stranger = CardRequest {
        customer_id: "cus-2".into(),
        iban,
    };
    let refused = bank
        .issue_virtual_card("step-2", &stranger)
        .await
        .unwrap_err();
    assert_eq!(
        api_failure(refused),
        (422, "unknown_account".into(), ErrorClass::Permanent)
    );
}

#[tokio::test]
async fn a_bad_api_key_is_permanent() {
    let env = BankEnv::start(6, None).await;
    let bank = client(&env.base_url(), "not-the-key");
    let err = bank
        .open_account("req-1", &application("cus-1", "NL"))
        .await
        .unwrap_err();
    assert_eq!(
        api_failure(err),
        (401, "invalid_api_key".into(), ErrorClass::Permanent)
    );
    assert_eq!(env.sandbox.bank().stats().create_calls, 0);
}

#[tokio::test]
async fn injected_server_errors_are_transient_and_the_retry_succeeds() {
    let env = BankEnv::start(7, None).await;
    let bank = client(&env.base_url(), API_KEY);
    env.sandbox
        .bank()
        .set_faults(BankFaultsUpdate {
            create_fail_next: Some(1),
            card_fail_next: Some(1),
            status_error_rate: Some(1.0),
            ..Default::default()
        })
        .unwrap();
    let failed = bank
        .open_account("req-1", &application("cus-1", "NL"))
        .await
        .unwrap_err();
    assert_eq!(
        api_failure(failed),
        (500, "internal_error".into(), ErrorClass::Transient)
    );
    let accepted = bank
        .open_account("req-1", &application("cus-1", "NL"))
        .await
        .unwrap();
    let unavailable = bank
        .opening_status(&accepted.tracking_id)
        .await
        .unwrap_err();
    assert_eq!(
        api_failure(unavailable),
        (503, "service_unavailable".into(), ErrorClass::Transient)
    );
    let card = bank
        .issue_virtual_card(
            "step-1",
            &CardRequest {
                customer_id: "cus-1".into(),
                iban: "NL91ABNA0417164300".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(api_failure(card).2, ErrorClass::Transient);
    let stats = env.sandbox.bank().stats();
    assert_eq!(stats.openings, 1);
    assert_eq!(stats.injected_create_failures, 1);
    assert_eq!(stats.injected_card_failures, 1);
    assert_eq!(stats.cards_issued, 0);
}

#[tokio::test]
async fn a_rate_limit_carries_the_wait_the_bank_asked_for() {
    let env = BankEnv::start(8, None).await;
    env.sandbox
        .bank()
        .set_faults(BankFaultsUpdate {
            rate_limit_next: Some(1),
            rate_limit_retry_after_secs: Some(3),
            ..Default::default()
        })
        .unwrap();
    let bank = client(&env.base_url(), API_KEY);
    let err = bank.opening_status("opn_x").await.unwrap_err();
    assert_eq!(
        api_failure(err),
        (
            429,
            "rate_limited".into(),
            ErrorClass::RateLimited {
                retry_after: Some(Duration::from_secs(3))
            }
        )
    );
}

#[tokio::test]
async fn no_answer_is_transient_and_an_undecodable_answer_is_permanent() {
    // A port nothing listens on: bind one, learn it, close it.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let err = client(&format!("http://{closed}"), API_KEY)
        .opening_status("opn_1")
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Transport(_)), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Transient);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(any(|| async { "this is not json" }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let err = client(&format!("http://{addr}"), API_KEY)
        .opening_status("opn_1")
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Decode(_)), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Permanent);
}

#[tokio::test]
async fn a_decision_without_its_account_is_a_decode_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(any(|| async {
        axum::Json(serde_json::json!({"status": "COMPLETED", "bic": "ABNANL2A"}))
    }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let err = client(&format!("http://{addr}"), API_KEY)
        .open_account_sync("legacy-1", &application("cus-1", "NL"))
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Decode(_)), "{err:?}");
    assert!(err.to_string().contains("iban and bic"), "{err}");
}

#[test]
fn a_client_needs_an_http_base_url_and_a_sendable_key() {
    let build = |base_url: &str, api_key: &str| {
        BankClient::new(BankClientConfig {
            base_url: base_url.into(),
            api_key: api_key.into(),
            timeout: Duration::from_secs(1),
            legacy_timeout: Duration::from_secs(1),
        })
    };
    assert!(build("ftp://bank.example", "k").is_err());
    assert!(build("bank.example", "k").is_err());
    assert!(build("http://bank.example", "bad\nkey").is_err());
    assert!(build("https://bank.example/api/", "k").is_ok());
    // The key never shows in debug output.
    let config = BankClientConfig {
        base_url: "https://bank.example".into(),
        api_key: "very-secret".into(),
        timeout: Duration::from_secs(1),
        legacy_timeout: Duration::from_secs(1),
    };
    assert!(!format!("{config:?}").contains("very-secret"));
}
