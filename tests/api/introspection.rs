//! Actor introspection and metrics against the real server and sandbox: a running
//! sync's progress is visible mid-sync, then its outcome; a passivated account is
//! described without being activated; /metrics parses and its counters follow traffic.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{now_unix, spawn_env_with, sync_webhook_body, TestEnv, CONVERGE};

async fn actor(env: &TestEnv, key: &str) -> Value {
    env.get_json(&format!("{}/debug/actors/{key}", env.app_url))
        .await
}

/// Polls `/debug/actors/{key}` until `done` holds; fails with the last view otherwise.
async fn wait_for_actor(
    env: &TestEnv,
    key: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let view = actor(env, key).await;
        if done(&view) {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {what}; last view: {view:#}"
        );
        // Polling an observable condition, not sleeping as synchronization.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Scrapes /metrics and parses it with a real Prometheus parser.
async fn scrape(env: &TestEnv) -> prometheus_parse::Scrape {
    let response = env
        .client
        .get(format!("{}/metrics", env.app_url))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.expect("body");
    assert!(text.ends_with("# EOF\n"), "exposition must end with # EOF");
    // Strict on what the lenient parser skips: every sample belongs to a declared
    // family (with only the suffixes its type allows) and has a finite value.
    let mut families: HashMap<String, String> = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            families.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name = line.split(['{', ' ']).next().expect("name");
        let declared = families.iter().any(|(family, kind)| {
            let suffixes: &[&str] = match kind.as_str() {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                _ => &[""],
            };
            suffixes
                .iter()
                .any(|suffix| name == format!("{family}{suffix}"))
        });
        assert!(declared, "sample {line:?} belongs to no declared family");
        let value = line.rsplit(' ').next().expect("value");
        let value = if value == "+Inf" { "inf" } else { value };
        assert!(
            value.parse::<f64>().is_ok_and(f64::is_finite),
            "bad sample line {line:?}"
        );
    }
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("valid exposition")
}

/// The value of the sample `name` whose labels include `labels`, 0 when absent.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_sync_shows_its_progress_then_its_outcome() {
    let env = spawn_env_with(|s| {
        // Many small pages, each slowed down by the sandbox: a sync long enough to watch.
        s.plaid.sync_page_size = 25;
        s.actors.passivate_after = Duration::from_secs(600);
    })
    .await;
    let (item, token) = env.create_item(400).await;
    env.faults(&item, json!({ "sync_latency_ms": 60 })).await;
    let linked = env
        .link(&item, &token, "watched-owner", &["watched@example.com"])
        .await;
    let id = linked["id"].as_str().expect("id").to_string();

    // By alias: the same account, mid-sync, with live progress.
    let running = wait_for_actor(&env, "watched@example.com", "a sync in progress", |v| {
        v["state"] == "syncing" && v["current"]["pages"].as_u64().unwrap_or(0) > 0
    })
    .await;
    assert_eq!(running["account_id"], id.as_str());
    assert!(running["active"].as_bool().expect("active"));
    assert!(
        running["current"]["rows"].as_u64().expect("rows") > 0,
        "{running:#}"
    );
    assert_eq!(running["current"]["reason"], "activation");
    assert!(running["mailbox_depth"].is_u64());
    assert!(
        running["lag_seconds"].is_i64(),
        "never synced: lag counts from the link"
    );
    let events: Vec<&str> = running["events"]
        .as_array()
        .expect("events of a live actor")
        .iter()
        .map(|e| e["kind"].as_str().expect("kind"))
        .collect();
    assert!(events.contains(&"sync_started"), "{events:?}");
    assert!(!events.contains(&"sync_committed"), "{events:?}");
    let text = running.to_string();
    assert!(!text.contains(&token), "the access token must never appear");

    // Then its outcome.
    let done = wait_for_actor(&env, &id, "the committed sync", |v| {
        v["state"] == "idle" && v["last_sync_outcome"]["outcome"] == "committed"
    })
    .await;
    assert!(done["current"].is_null());
    assert_eq!(done["last_sync_outcome"]["added"], 400);
    assert!(done["last_sync_outcome"]["pages"].as_u64().expect("pages") >= 16);
    // The provider's request id of the committed sync's last page, for support tickets.
    let request_id = done["last_request_id"].as_str().unwrap_or("");
    assert!(!request_id.is_empty(), "no request id: {done}");
    assert_eq!(done["last_sync_outcome"]["request_id"], request_id);
    assert_eq!(done["transactions"], 400);
    assert_eq!(done["lag_seconds"], 0);
    let kinds: Vec<&str> = done["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["kind"].as_str().expect("kind"))
        .collect();
    assert!(
        kinds.ends_with(&["sync_started", "sync_committed"]),
        "{kinds:?}"
    );

    // The listing shows the same account; a live-state filter asks the actors.
    let page = env
        .get_json(&format!(
            "{}/debug/actors?state=idle&provider=plaid",
            env.app_url
        ))
        .await;
    let ids: Vec<&str> = page["actors"]
        .as_array()
        .expect("actors")
        .iter()
        .map(|a| a["account_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, vec![id.as_str()]);
    let syncing = env
        .get_json(&format!("{}/debug/actors?state=syncing", env.app_url))
        .await;
    assert_eq!(syncing["actors"].as_array().expect("actors").len(), 0);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passivated_account_is_described_without_being_activated() {
    let env = spawn_env_with(|s| {
        s.actors.passivate_after = Duration::from_millis(100);
    })
    .await;
    let (id, item) = env.linked_item(30).await;
    env.converge(&id, &item).await;
    wait_for_actor(&env, &id, "passivation", |v| v["active"] == false).await;

    let before = scrape(&env).await;
    let active_before = sample(&before, "acctor_actors_active", &[]);
    let activations_before = sample(&before, "acctor_actor_activations_total", &[]);
    for _ in 0..3 {
        let view = actor(&env, &id).await;
        assert_eq!(view["state"], "passivated", "{view:#}");
        assert_eq!(view["active"], false);
        assert!(view["mailbox_depth"].is_null());
        assert!(view["events"].is_null());
        assert!(view["events_note"]
            .as_str()
            .expect("note")
            .contains("passivated"));
        assert_eq!(view["last_sync_outcome"]["outcome"], "committed");
        assert_eq!(view["transactions"], 30);
    }
    let page = env
        .get_json(&format!(
            "{}/debug/actors?state=passivated&sort=lag",
            env.app_url
        ))
        .await;
    assert_eq!(page["actors"].as_array().expect("actors").len(), 1);
    let after = scrape(&env).await;
    assert_eq!(sample(&after, "acctor_actors_active", &[]), active_before);
    assert_eq!(
        sample(&after, "acctor_actor_activations_total", &[]),
        activations_before,
        "describing must never activate"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_their_counters_follow_traffic() {
    let env = spawn_env_with(|_| {}).await;
    let (id, item) = env.linked_item(20).await;
    env.converge(&id, &item).await;
    let before = scrape(&env).await;
    let accepted = |s: &prometheus_parse::Scrape| {
        sample(
            s,
            "acctor_webhooks_total",
            &[("provider", "plaid"), ("outcome", "accepted")],
        )
    };
    let committed = |s: &prometheus_parse::Scrape| {
        sample(
            s,
            "acctor_syncs_total",
            &[("provider", "plaid"), ("outcome", "committed")],
        )
    };

    // One new event for the account; an event for an item not linked yet, twice (kept
    // in the inbox, so its repeat is a duplicate); two with bad signatures.
    env.mutate_quietly(&item, 3, 0, 0).await;
    let body = sync_webhook_body(&item, json!({ "nonce": "metrics-test" }));
    let jwt = env.sandbox.sign_webhook(&body, now_unix());
    assert_eq!(env.post_webhook(&body, Some(&jwt)).await.status(), 200);
    let early = sync_webhook_body("item-not-linked-yet", json!({}));
    let early_jwt = env.sandbox.sign_webhook(&early, now_unix());
    assert_eq!(
        env.post_webhook(&early, Some(&early_jwt)).await.status(),
        200
    );
    assert_eq!(
        env.post_webhook(&early, Some(&early_jwt)).await.status(),
        200
    );
    assert_eq!(env.post_webhook(&body, None).await.status(), 401);
    assert_eq!(env.post_webhook(b"{", Some(&jwt)).await.status(), 401);
    env.converge(&id, &item).await;

    let after = scrape(&env).await;
    // The sandbox may announce the new rows too; ours are accepted at least.
    assert!(accepted(&after) - accepted(&before) >= 2.0);
    assert_eq!(
        sample(&after, "acctor_webhooks_total", &[("outcome", "duplicate")])
            - sample(
                &before,
                "acctor_webhooks_total",
                &[("outcome", "duplicate")]
            ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "acctor_webhooks_total",
            &[("outcome", "rejected"), ("reason", "unauthorized")]
        ),
        2.0
    );
    assert!(committed(&after) > committed(&before));
    assert!(
        sample(
            &after,
            "acctor_sync_rows_applied_total",
            &[("kind", "added")]
        ) >= sample(
            &before,
            "acctor_sync_rows_applied_total",
            &[("kind", "added")]
        ) + 3.0
    );
    let durations: HashMap<&str, f64> = after
        .samples
        .iter()
        .filter(|s| s.metric == "acctor_sync_duration_seconds")
        .filter_map(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => Some((
                s.labels.get("outcome").unwrap_or(""),
                buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        durations.get("committed").copied(),
        Some(committed(&after)),
        "{durations:?}"
    );
    // The event for the unlinked item waits in the inbox.
    assert_eq!(sample(&before, "acctor_inbox_depth", &[]), 0.0);
    assert_eq!(sample(&after, "acctor_inbox_depth", &[]), 1.0);
    assert_eq!(sample(&after, "acctor_retry_backlog", &[]), 0.0);
    assert!(sample(&after, "acctor_actors_active", &[]) >= 1.0);
    env.shutdown().await;
}

#[tokio::test]
async fn accounts_waiting_for_a_login_are_filtered_as_needs_reauth() {
    let env = spawn_env_with(|_| {}).await;
    let (parked_item, token) = env.create_item(10).await;
    let parked = env.link(&parked_item, &token, "owner-parked", &[]).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (healthy, healthy_item) = env.linked_item(10).await;
    env.converge(&parked, &parked_item).await;
    env.converge(&healthy, &healthy_item).await;
    // Plaid's own Sandbox call: the item needs a login and fires ITEM/ERROR at acctor.
    env.post_json(
        &format!("{}/sandbox/item/reset_login", env.sandbox_url),
        json!({
            "client_id": "acctor-demo-client",
            "secret": "acctor-demo-secret",
            "access_token": token,
        }),
    )
    .await;
    wait_for_actor(&env, &parked, "the park", |v| v["state"] == "needs_reauth").await;

    let ids = |page: &Value| -> Vec<String> {
        page["actors"]
            .as_array()
            .expect("actors")
            .iter()
            .map(|a| a["account_id"].as_str().expect("id").to_string())
            .collect()
    };
    let url = |state: &str| format!("{}/debug/actors?state={state}", env.app_url);
    assert_eq!(
        ids(&env.get_json(&url("needs_reauth")).await),
        vec![parked.clone()]
    );
    for other in ["idle", "active", "passivated"] {
        assert!(
            !ids(&env.get_json(&url(other)).await).contains(&parked),
            "a parked account is not listed as {other}"
        );
    }
    env.shutdown().await;
}
