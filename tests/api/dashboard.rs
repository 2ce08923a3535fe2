//! The dashboard in a real headless Chromium against the real server and sandbox: the
//! accounts appear, a slow sync is seen going from syncing (with its progress bar) to
//! idle, and a screenshot is saved to target/test-artifacts/dashboard.png.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use crate::cdp::Browser;
use crate::helpers::{spawn_env_with, CONVERGE};

fn artifact(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    dir.join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_accounts_and_a_sync_changing_state() {
    let env = spawn_env_with(|s| {
        s.plaid.sync_page_size = 5;
        s.actors.passivate_after = Duration::from_secs(600);
    })
    .await;
    let mut accounts = Vec::new();
    for (n, history) in [(0, 40), (1, 120), (2, 60)] {
        let (item, token) = env.create_item(history).await;
        let alias = format!("customer-{n}@example.com");
        let linked = env
            .link(&item, &token, &format!("owner-{n}"), &[alias.as_str()])
            .await;
        let id = linked["id"].as_str().expect("id").to_string();
        env.converge(&id, &item).await;
        accounts.push((id, item));
    }
    let (watched, watched_item) = accounts[1].clone();

    let mut browser = Browser::launch(1440, 900).await;
    browser
        .navigate(&format!(
            "{}/dashboard#token={}&account={watched}",
            env.app_url, env.admin_token
        ))
        .await;
    browser
        .wait_for(
            "the three accounts",
            "document.querySelectorAll('#accounts-body tr[data-account]').length === 3",
            CONVERGE,
        )
        .await;
    let states = browser
        .eval("[...document.querySelectorAll('#accounts-body .pill')].map(p => p.dataset.state).join(',')")
        .await;
    assert_eq!(states, json!("idle,idle,idle"));
    // The selected account's live view is open.
    browser
        .wait_for(
            "the actor view",
            "document.querySelector('#d-body .events li') !== null",
            CONVERGE,
        )
        .await;

    // A slow sync of the watched account: every page takes a while at the sandbox.
    env.faults(&watched_item, json!({ "sync_latency_ms": 400 }))
        .await;
    env.mutate(&watched_item, 60, 10, 0).await;
    let row_state = format!(
        "(document.querySelector('#accounts-body tr[data-account=\"{watched}\"] .pill') || {{}}).dataset?.state"
    );
    browser
        .wait_for(
            "the watched account syncing with progress",
            &format!(
                "{row_state} === 'syncing' && document.querySelector('#d-progress-counts') !== null \
                 && !document.querySelector('#d-progress-counts').textContent.startsWith('0 pages')"
            ),
            CONVERGE,
        )
        .await;
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(artifact("dashboard.png"), &png).expect("write screenshot");

    browser
        .wait_for(
            "the watched account idle again after its sync",
            &format!(
                "{row_state} === 'idle' && [...document.querySelectorAll('#d-body .events .kind')]\
                 .some(k => k.textContent.startsWith('sync_committed'))"
            ),
            CONVERGE,
        )
        .await;
    let banner_hidden = browser
        .eval("document.getElementById('banner').hidden")
        .await;
    assert_eq!(banner_hidden, json!(true), "no error banner");
    std::fs::write(artifact("dashboard-idle.png"), browser.screenshot().await)
        .expect("write screenshot");
    browser.close().await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripe_accounts_view_shows_its_mirror() {
    let env = spawn_env_with(|_| {}).await;
    let stripe = env.sandbox.stripe();
    let account = stripe.create_account(None);
    for object_type in [
        acctor::domain::stripe::ObjectType::Products,
        acctor::domain::stripe::ObjectType::Customers,
    ] {
        stripe.generate(&account.id, object_type, 30);
    }
    let linked = env
        .post_json(
            &format!("{}/v1/accounts", env.app_url),
            json!({
                "provider": "stripe", "item_id": account.id, "access_token": account.api_key,
                "owner_id": "finance", "webhook_secrets": [account.webhook_secret],
                "object_types": ["products", "customers"],
            }),
        )
        .await;
    let id = linked["id"].as_str().expect("id").to_string();
    let mut browser = Browser::launch(1440, 900).await;
    browser
        .navigate(&format!(
            "{}/dashboard#token={}&account={id}",
            env.app_url, env.admin_token
        ))
        .await;
    browser
        .wait_for(
            "the mirror's two types, backfilled, 30 objects each",
            "[...document.querySelectorAll('#d-body .stripe tr[data-type]')]\
             .filter(r => r.cells[1].textContent === 'done' && r.cells[2].textContent === '30').length === 2",
            CONVERGE,
        )
        .await;
    std::fs::write(artifact("dashboard-stripe.png"), browser.screenshot().await)
        .expect("write screenshot");
    browser.close().await;
    env.shutdown().await;
}
