//! Secrets never reach the log. Its own test binary, because it installs the process's
//! global tracing subscriber (at TRACE for acctor, DEBUG for the libraries below it) and
//! captures every line, text and JSON, into memory while a whole flow runs: link, the
//! initial sync, a signed webhook and the sync it triggers, a forged webhook, admin
//! requests with a right and a wrong token. Then no access token, provider secret,
//! admin token or webhook JWT may appear anywhere in what was captured.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use helpers::{spawn_env, sync_webhook_body};

/// An in-memory log sink.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

#[tokio::test]
async fn secrets_never_appear_in_logs_across_link_sync_and_webhooks() {
    let text = Captured::default();
    let json = Captured::default();
    let (text_sink, json_sink) = (text.clone(), json.clone());
    tracing_subscriber::registry()
        .with(EnvFilter::new("debug,acctor=trace,api=trace,logs=trace"))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE)
                .with_writer(move || text_sink.clone()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_span_list(true)
                .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE)
                .with_writer(move || json_sink.clone()),
        )
        .try_init()
        .expect("the only subscriber in this test binary");

    let env = spawn_env().await;
    let state = env.state.clone().expect("app running");
    let (item_id, access_token) = env.create_item(40).await;
    let account = env
        .link(
            &item_id,
            &access_token,
            "log-owner",
            &["log-alias@example.com"],
        )
        .await;
    let account_id = account["id"].as_str().expect("id").to_string();
    env.converge(&account_id, &item_id).await;

    // A change at the bank: the sandbox signs a webhook (Plaid-Verification JWT) and
    // delivers it; acctor verifies it and syncs.
    env.mutate(&item_id, 3, 1, 1).await;
    env.converge(&account_id, &item_id).await;

    // A forged webhook: its JWT is rejected, and must not be echoed into the log.
    let forged_jwt = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImZvcmdlZCJ9.eyJpYXQiOjF9.Zm9yZ2Vk";
    let response = env
        .post_webhook(&sync_webhook_body(&item_id, Value::Null), Some(forged_jwt))
        .await;
    assert_eq!(response.status(), 401);

    // Admin requests: a wrong token (refused) and the right one.
    let wrong_token = "wrong-admin-token-4f1c9a7e2b";
    let refused = reqwest::Client::new()
        .get(format!("{}/v1/accounts/{account_id}/sync", env.app_url))
        .bearer_auth(wrong_token)
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 401);
    env.sync_status("log-alias@example.com").await;

    // Whatever a careless log line would print: the settings and the stored account.
    let stored = state
        .store
        .get_account(&acctor::domain::AccountId(account_id.clone()))
        .expect("store")
        .expect("account");
    tracing::info!(settings = ?state.settings, account = ?stored, "debug output of secret holders");
    let admin_token = env.admin_token.clone();
    drop(state);
    env.shutdown().await;

    let captured = format!("{}\n{}", text.text(), json.text());
    // The capture works and carries the account id in span fields: some JSON line of a
    // request about this account has it on its `http_request` span.
    assert!(captured.contains("account linked"), "nothing captured");
    let in_span = json.text().lines().any(|line| {
        serde_json::from_str::<Value>(line).is_ok_and(|v| {
            v["spans"].as_array().is_some_and(|spans| {
                spans
                    .iter()
                    .any(|s| s["name"] == "http_request" && s["account_id"] == account_id)
            })
        })
    });
    assert!(
        in_span,
        "no log line carries account_id on its request span"
    );
    assert!(
        captured.contains("webhook acknowledged"),
        "the signed webhook was not part of the flow"
    );

    for (what, secret) in [
        ("the access token", access_token.as_str()),
        ("the Plaid client secret", "acctor-demo-secret"),
        ("the admin token", admin_token.as_str()),
        ("a wrong admin token", wrong_token),
        ("the forged webhook JWT", forged_jwt),
        // Every JWT (the sandbox's signed Plaid-Verification headers included) starts
        // with the base64 of `{"`.
        ("a JWT", "eyJ"),
    ] {
        if let Some(at) = captured.find(secret) {
            let start = captured[..at].rfind('\n').map_or(0, |i| i + 1);
            let end = captured[at..].find('\n').map_or(captured.len(), |i| at + i);
            panic!("{what} appears in the log: {}", &captured[start..end]);
        }
    }
}
