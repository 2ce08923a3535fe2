//! What only the PostgreSQL store can go through: the database going away while acctor
//! runs. Webhooks are refused with 503 and `Retry-After` (never a 2xx for an event that
//! is not committed), `/readyz` names the failed check, a sync caught by the outage
//! fails into a retry, and everything resumes once the database is back.

use std::time::Duration;

use acctor::config::StoreBackend;
use acctor::testing::PgServer;
use serde_json::{json, Value};

use crate::helpers::{now_unix, spawn_env_with, sync_webhook_body, TestEnv, CONVERGE};

async fn readyz(env: &TestEnv) -> (u16, Value) {
    let response = env
        .client
        .get(format!("{}/readyz", env.app_url))
        .send()
        .await
        .expect("readyz");
    let status = response.status().as_u16();
    (status, response.json().await.expect("readyz json"))
}

/// Polls `probe` (an observable condition, with a deadline) until it holds.
async fn until<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while !probe().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_refuses_webhooks_with_503_and_everything_resumes_after() {
    // A server of its own: this test stops it.
    let server = tokio::task::spawn_blocking(PgServer::start)
        .await
        .expect("start task")
        .expect("throwaway postgres");
    let database = server.create_database().expect("database");
    let url = database.url.clone();
    let env = spawn_env_with(move |s| {
        s.store.backend = StoreBackend::Postgres;
        s.store.postgres.url = secrecy::SecretString::from(url);
        s.store.postgres.connect_timeout = Duration::from_secs(1);
        s.actors.min_sync_interval = Duration::ZERO;
    })
    .await;
    let (account, item) = env.linked_item(20).await;
    env.converge(&account, &item).await;

    // A sync in flight when the database goes: the provider answers slowly.
    env.faults(&item, json!({ "sync_latency_ms": 1500 })).await;
    env.mutate_quietly(&item, 3, 1, 0).await;
    let before = sync_webhook_body(&item, json!({ "n": 1 }));
    let jwt = env.sandbox.sign_webhook(&before, now_unix());
    assert_eq!(env.post_webhook(&before, Some(&jwt)).await.status(), 200);
    until("the sync starts", || async {
        env.sync_status(&account).await["state"] == "syncing"
    })
    .await;
    server.stop().expect("database stops");

    // A webhook during the outage is refused, and says when to come back.
    let during = sync_webhook_body(&item, json!({ "n": 2 }));
    let jwt = env.sandbox.sign_webhook(&during, now_unix());
    let response = env.post_webhook(&during, Some(&jwt)).await;
    assert_eq!(response.status(), 503);
    assert!(
        response.headers().get("retry-after").is_some(),
        "{:?}",
        response.headers()
    );
    let body: Value = response.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    let (status, report) = readyz(&env).await;
    assert_eq!(status, 503, "{report}");
    assert!(
        report["failed"]
            .as_array()
            .is_some_and(|f| f.contains(&json!("store"))),
        "{report}"
    );

    // The sync in flight reaches its commit while the database is away: it fails, and
    // its actor schedules a retry (seen in memory: every store read fails now).
    let registry = env.state.as_ref().expect("running").ctx.registry.clone();
    let account_id = acctor::domain::AccountId(account.clone());
    until("the sync caught by the outage fails", || {
        let (registry, account_id) = (registry.clone(), account_id.clone());
        async move {
            registry
                .snapshot(&account_id)
                .await
                .ok()
                .flatten()
                .is_some_and(|snapshot| snapshot.attempt >= 1)
        }
    })
    .await;

    server.resume().expect("database back");
    until("ready again", || async { readyz(&env).await.0 == 200 }).await;
    env.faults(&item, json!({ "sync_latency_ms": 0 })).await;
    // The failed sync is retried: the copy catches up with no new webhook.
    env.converge(&account, &item).await;
    // The provider retries the refused webhook; it is accepted now.
    let jwt = env.sandbox.sign_webhook(&during, now_unix());
    assert_eq!(env.post_webhook(&during, Some(&jwt)).await.status(), 200);
    env.mutate(&item, 2, 0, 0).await;
    env.converge(&account, &item).await;
    env.shutdown().await;
    drop(server);
}

/// The README's PostgreSQL section works as written: its privileges, run as the
/// database's owner, are enough for acctor to start as its own role and for a reader
/// to run its example queries, which return the copy's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_privileges_and_queries_work_as_written() {
    let server = PgServer::shared().expect("throwaway postgres");
    let database = server.create_database().expect("database");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let blocks = sql_blocks(&readme);
    let (privileges, queries): (Vec<&String>, Vec<&String>) =
        blocks.iter().partition(|b| b.contains("CREATE ROLE"));
    assert_eq!(privileges.len(), 1, "one privileges block");
    assert_eq!(queries.len(), 3, "three example queries");
    // Role names are the cluster's: unique per database here.
    let role = format!("acctor_{}", database.name);
    let reader = format!("analyst_{}", database.name);
    let grants = privileges[0]
        .replace("'choose-one'", "'unused-with-trust-auth'")
        .replace("DATABASE app", &format!("DATABASE {}", database.name))
        .replace("AUTHORIZATION acctor", &format!("AUTHORIZATION {role}"))
        .replace("ROLE acctor ", &format!("ROLE {role} "))
        .replace("TO acctor;", &format!("TO {role};"))
        .replace("analyst", &reader);
    server
        .psql(&database.name, &format!("CREATE ROLE {reader}; {grants}"))
        .expect("the README's privileges");
    let url = format!(
        "postgres://{role}@127.0.0.1:{}/{}",
        server.port(),
        database.name
    );
    let env = spawn_env_with(move |s| {
        s.store.backend = StoreBackend::Postgres;
        s.store.postgres.url = secrecy::SecretString::from(url);
    })
    .await;
    let (item, token) = env.create_item(40).await;
    let account = env.link(&item, &token, "user-42", &[]).await;
    let account = account["id"].as_str().expect("id").to_string();
    let local = env.converge(&account, &item).await;
    assert!(!local.is_empty());
    env.faults(&item, json!({ "login_required": true })).await;
    env.mutate(&item, 1, 0, 0).await;
    until("an incident opens", || async {
        env.get_json(&format!("{}/v1/incidents?state=open", env.app_url))
            .await["incidents"]
            .as_array()
            .is_some_and(|i| !i.is_empty())
    })
    .await;

    let as_reader = |sql: &str| {
        server
            .psql(&database.name, &format!("SET ROLE {reader}; {sql}"))
            .unwrap_or_else(|error| panic!("{sql}\n{error}"))
    };
    // Every query runs; the ones not bound to last month see this account's rows.
    as_reader(queries[0]);
    let incidents = as_reader(queries[1]);
    assert!(incidents.contains("user-42"), "{incidents}");
    let freshness = as_reader(queries[2]);
    assert!(freshness.contains(&account), "{freshness}");
    let rows = as_reader(&format!(
        "SELECT count(*) FROM acctor.transactions WHERE account_id = '{account}'"
    ));
    assert_eq!(rows, local.len().to_string());
    env.shutdown().await;
}

/// The bodies of the ```sql blocks of a Markdown text.
fn sql_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sql") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), line) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}
