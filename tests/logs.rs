//! Secrets never reach the log. Its own test binary, because it installs the process's
//! global tracing subscriber (at TRACE for acctor, DEBUG for the libraries below it) and
//! captures every line into memory while a whole flow runs: link, the initial sync, a
//! signed webhook and the sync it triggers, provider errors (a failing sync that is
//! retried, and a login fault that parks the account until LOGIN_REPAIRED), a forged
//! webhook, admin requests with a right and a wrong token. Then no access token,
//! provider secret, admin token or webhook JWT may appear anywhere in what was captured.
//!
//! The JSON and text lines are the shipped formats (`acctor::telemetry::layer`, what
//! `telemetry::init` installs), written to memory instead of stdout; a third layer
//! prints every span as it opens and closes, so that a secret in a span field is caught
//! even where no event inside that span prints it.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use acctor::telemetry::{self, LogFormat};
use serde_json::{json, Value};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use helpers::{spawn_env, sync_webhook_body, TestEnv, CONVERGE};

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

/// Polls the account's sync status until `done` holds (an observable condition).
async fn wait_for_status(env: &TestEnv, account: &str, what: &str, done: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let status = env.sync_status(account).await;
        if done(&status) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {what}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn secrets_never_appear_in_logs_across_link_sync_and_webhooks() {
    let text = Captured::default();
    let json = Captured::default();
    let (text_sink, json_sink) = (text.clone(), json.clone());
    let spans = Captured::default();
    let spans_sink = spans.clone();
    tracing_subscriber::registry()
        .with(EnvFilter::new("debug,acctor=trace,api=trace,logs=trace"))
        .with(telemetry::layer(
            LogFormat::Text,
            move || text_sink.clone(),
            false,
        ))
        .with(telemetry::layer(
            LogFormat::Json,
            move || json_sink.clone(),
            false,
        ))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE)
                .with_writer(move || spans_sink.clone()),
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

    // Provider errors: a sync that fails with Plaid's error object (logged with its
    // code, message and request id) and is retried once the provider recovers.
    env.faults(
        &item_id,
        json!({ "error_rate": { "transactions_sync": 1.0 }, "error_mix": { "internal": 1 } }),
    )
    .await;
    env.mutate(&item_id, 2, 0, 0).await;
    wait_for_status(&env, &account_id, "a retry record", |s| {
        s["retry"]["code"] == "INTERNAL_SERVER_ERROR"
    })
    .await;
    env.faults(&item_id, json!({ "error_mix": { "login": 1 } }))
        .await;
    // And a login fault: the ITEM/ERROR webhook and the 400 park the account; Plaid's
    // Sandbox repair (a call carrying the access token and the client secret) heals it.
    wait_for_status(&env, &account_id, "the needs_reauth park", |s| {
        s["state"] == "needs_reauth"
    })
    .await;
    env.faults(
        &item_id,
        json!({ "error_rate": { "transactions_sync": null } }),
    )
    .await;
    env.post_json(
        &format!("{}/sandbox/item/fire_webhook", env.sandbox_url),
        json!({
            "client_id": "acctor-demo-client", "secret": "acctor-demo-secret",
            "access_token": access_token, "webhook_code": "LOGIN_REPAIRED",
        }),
    )
    .await;
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
        .ctx
        .store
        .blocking()
        .get_account(&acctor::domain::AccountId(account_id.clone()))
        .expect("store")
        .expect("account");
    tracing::info!(settings = ?state.ctx.settings, account = ?stored, "debug output of secret holders");
    let admin_token = env.admin_token.clone();
    drop(state);
    env.shutdown().await;

    let captured = format!("{}\n{}\n{}", text.text(), json.text(), spans.text());
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
    // The provider errors were logged, in the shipped JSON format, with their codes.
    let json_lines: Vec<Value> = json
        .text()
        .lines()
        .map(|line| serde_json::from_str(line).expect("every JSON line parses"))
        .collect();
    for (message, code) in [
        ("sync failed", "INTERNAL_SERVER_ERROR"),
        ("", "ITEM_LOGIN_REQUIRED"),
    ] {
        assert!(
            json_lines.iter().any(|v| {
                (message.is_empty() || v["message"] == message)
                    && v.to_string().contains(code)
                    && v["level"].is_string()
            }),
            "no JSON line for the provider error {code}"
        );
    }

    // The main text lines, as an operator reads them: plain values, the account's span
    // (id and alias) once, the facts under one name each.
    let text_lines: Vec<String> = text
        .text()
        .lines()
        // Without the timestamp, which changes from run to run.
        .map(|line| {
            line.split_once(' ')
                .map_or(line, |(_, rest)| rest)
                .to_string()
        })
        .collect();
    let line_with = |message: &str, context: &str| -> String {
        text_lines
            .iter()
            .find(|line| line.contains(message) && line.contains(context))
            .unwrap_or_else(|| panic!("no text line {message:?} with {context:?}"))
            .clone()
    };
    assert_eq!(
        line_with("account linked", &item_id),
        format!(
            " INFO http_request{{method=POST route=/v1/accounts account_id={account_id}}}: \
             acctor::service::accounts: account linked provider=plaid item_id={item_id} \
             adopted_events=0"
        )
    );
    let committed = line_with("sync committed", &account_id);
    let prefix = format!(
        " INFO account{{account_id={account_id} alias=log-alias@example.com}}: \
         acctor::actors::account::machine: sync committed added="
    );
    assert!(committed.starts_with(&prefix), "{committed}");
    assert!(
        committed.contains(" modified=") && committed.contains(" request_id="),
        "{committed}"
    );
    let failed = line_with("sync failed", "INTERNAL_SERVER_ERROR");
    let prefix = format!(
        " WARN account{{account_id={account_id} alias=log-alias@example.com}}: \
         acctor::actors::account::machine: sync failed attempt=1 code=INTERNAL_SERVER_ERROR \
         error=\"500 INTERNAL_SERVER_ERROR:"
    );
    assert!(failed.starts_with(&prefix), "{failed}");
    assert!(failed.contains(" retry_in_ms="), "{failed}");
    let rejected = line_with("webhook rejected", "provider=plaid");
    assert!(
        rejected.starts_with(
            " WARN http_request{method=POST route=/webhooks/{provider}}: \
             acctor::service::ingest: webhook rejected provider=plaid error="
        ),
        "{rejected}"
    );
    // acctor's own lines (libraries log at DEBUG here too, in their own words).
    for line in text_lines.iter().filter(|line| line.contains(" acctor::")) {
        // No Rust Debug output (`Some(…)`, `Committed {`), no repeated account id.
        assert!(
            !line.contains("Some(") && !line.contains(" { "),
            "debug output: {line}"
        );
        assert!(
            line.matches("account_id=").count() <= 1,
            "account id twice: {line}"
        );
    }

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
