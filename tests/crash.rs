//! The crash test: the real `acctor` binary, SIGKILLed at random moments under webhook
//! load, must never lose nor double anything it acknowledged.
//!
//! It runs two child processes: `acctor sandbox` (the simulated bank, alive for the
//! whole test) and `acctor serve` on a fixed port and data dir, killed with SIGKILL
//! (`Child::kill` on Unix) K times and restarted on the same data dir each time. Load
//! tasks mutate the sandbox's items and fire their webhooks; some mutations also turn
//! on sandbox faults (latency, mutation during pagination, rejected cursors, duplicate
//! and dropped webhooks, injected `/transactions/sync` errors). After the load, faults
//! are cleared and acctor restarted once more; then:
//!
//! 1. every item whose last webhook acctor acknowledged (2xx) must converge to the
//!    sandbox's data with no further webhook: the acknowledged event was on disk and is
//!    replayed after the crash;
//! 2. the other items get one more webhook (Plaid's later retry) and must converge too;
//! 3. no transaction id appears twice, `/debug/overview` reports `inbox_depth` 0, and once
//!    acctor is quiescent again every account's sync status shows `pending_inbox` 0 and
//!    no retry record (`retry` null) and `/metrics` shows `acctor_retry_backlog 0`:
//!    no inbox entry and no retry record is left behind.
//!
//! Found by this test and fixed: the sandbox's `SYNC_UPDATES_AVAILABLE` bodies for one
//! item are byte-identical, and the store used to answer a repeat as `Duplicate` (200,
//! nothing written) while the original inbox entry was pending — even when a sync that
//! started before the new mutation had already read it. A SIGKILL after that sync's
//! commit lost the acknowledged announcement. Syncs now claim the entries they read, and
//! a repeat of a claimed entry is appended as a new event;
//! `acknowledged_duplicate_webhook_survives_a_kill_after_the_sync_it_coalesced_into`
//! reproduces the interleaving deterministically.
//!
//! Profiles: the CI profile (default) is small and quick; `ACCTOR_CRASH_LONG=1` selects
//! the long one (≥ 20 kills, ≥ 10,000 webhooks). `ACCTOR_CRASH_SEED` sets the seed.

#[path = "crash/harness.rs"]
mod harness;
#[path = "crash/openings.rs"]
mod openings;
#[path = "crash/stripe.rs"]
mod stripe;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use harness::{Acctor, Http, Sandbox};

/// The size of one run.
#[derive(Debug, Clone, Copy)]
struct Profile {
    name: &'static str,
    accounts: usize,
    kills: usize,
    mutations: u64,
    workers: usize,
    history: u32,
    converge: Duration,
}

const CI: Profile = Profile {
    name: "ci",
    accounts: 5,
    kills: 3,
    mutations: 300,
    workers: 5,
    history: 60,
    converge: Duration::from_secs(60),
};

const LONG: Profile = Profile {
    name: "long",
    accounts: 32,
    kills: 25,
    mutations: 12_000,
    workers: 16,
    history: 200,
    converge: Duration::from_secs(180),
};

fn profile() -> Profile {
    match std::env::var("ACCTOR_CRASH_LONG").as_deref() {
        Ok("1") | Ok("true") | Ok("yes") => LONG,
        _ => CI,
    }
}

fn seed() -> u64 {
    std::env::var("ACCTOR_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00c0_ffee)
}

/// One linked account and what the load did to its item.
struct Account {
    id: String,
    item_id: String,
    /// Whether the webhook of the item's latest mutation was answered 2xx.
    last_acked: AtomicBool,
    /// The faults the load set on the item, in order, for failure messages.
    faults: std::sync::Mutex<Vec<String>>,
}

/// Counters the load reports at the end.
#[derive(Default)]
struct Counters {
    mutations: AtomicU64,
    acked: AtomicU64,
    unacked: AtomicU64,
    faults_set: AtomicU64,
}

/// A random fault for one item, from the sandbox's admin API.
fn random_fault(rng: &mut ChaCha8Rng) -> Value {
    match rng.gen_range(0..8) {
        0 => json!({ "sync_latency_ms": rng.gen_range(1..40) }),
        1 => json!({ "sync_latency_after_ms": rng.gen_range(1..40) }),
        2 => json!({ "mutation_during_pagination": rng.gen_range(1..4) }),
        3 => json!({ "duplicate_webhooks": rng.gen_range(0..3) }),
        4 => json!({ "reject_cursor": 1 }),
        5 => json!({
            "error_rate": { "transactions_sync": 0.2, "transactions_get": 0.1 },
            "error_mix": { "internal": 1.0, "rate_limit": 1.0 },
        }),
        6 => json!({ "webhook_drop_rate": 0.2 }),
        _ => json!({ "webhook_duplicate_rate": 0.3 }),
    }
}

/// Every fault switch off and every random-fault override removed.
fn no_faults() -> Value {
    json!({
        "mutation_during_pagination": 0,
        "reject_cursor": 0,
        "duplicate_webhooks": 0,
        "sync_latency_ms": 0,
        "sync_latency_after_ms": 0,
        "login_required": false,
        "error_rate": { "transactions_sync": null, "transactions_get": null, "item_get": null },
        "error_mix": null,
        "latency_ms": { "transactions_sync": null, "transactions_get": null, "item_get": null },
        "webhook_drop_rate": null,
        "webhook_duplicate_rate": null,
        "webhook_reorder": null,
    })
}

/// One load worker: mutates its own items (so each item's mutations are sequential and
/// "its last webhook was acknowledged" is well defined) until the shared budget is spent.
async fn load_worker(
    http: Http,
    sandbox_url: String,
    accounts: Arc<Vec<Account>>,
    mine: Vec<usize>,
    budget: u64,
    counters: Arc<Counters>,
    seed: u64,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    while counters.mutations.fetch_add(1, Ordering::SeqCst) < budget {
        let account = &accounts[mine[rng.gen_range(0..mine.len())]];
        if rng.gen_ratio(1, 25) {
            let fault = random_fault(&mut rng);
            http.post_ok(
                &format!("{sandbox_url}/admin/items/{}/faults", account.item_id),
                &fault,
            )
            .await;
            counters.faults_set.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut log) = account.faults.lock() {
                log.push(fault.to_string());
            }
        }
        let body = json!({
            "add": rng.gen_range(0..4),
            "modify": rng.gen_range(0..3),
            "remove": rng.gen_range(0..2),
            "fire_webhook": true,
        });
        let answer = http
            .post_ok(
                &format!("{sandbox_url}/admin/items/{}/mutate", account.item_id),
                &body,
            )
            .await;
        let acked = answer["webhook_status"]
            .as_u64()
            .is_some_and(|s| (200..300).contains(&s));
        account.last_acked.store(acked, Ordering::SeqCst);
        if acked {
            counters.acked.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.unacked.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Waits until acctor's copy of `account` equals the sandbox's and nothing is pending
/// for it; fails with the difference at the deadline.
async fn converge(
    http: &Http,
    acctor: &Acctor,
    sandbox: &Sandbox,
    account: &Account,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let status = http
            .get_ok(&format!("{}/v1/accounts/{}/sync", acctor.url(), account.id))
            .await;
        let settled = status["pending_inbox"].as_u64() == Some(0)
            && status["state"].as_str() != Some("syncing");
        let expected = sandbox.transactions(http, &account.item_id).await;
        let local = acctor.transactions(http, &account.id).await;
        if settled && sorted(&local) == expected {
            return;
        }
        if Instant::now() > deadline {
            let local = sorted(&local);
            let ids = |rows: &[Value]| -> Vec<String> {
                rows.iter()
                    .map(|r| r["transaction_id"].as_str().unwrap_or("?").to_string())
                    .collect()
            };
            let only_local: Vec<_> = local
                .iter()
                .filter(|r| !expected.contains(r))
                .cloned()
                .collect();
            let only_sandbox: Vec<_> = expected
                .iter()
                .filter(|r| !local.contains(r))
                .cloned()
                .collect();
            panic!(
                "account {} (item {}) never converged: local {} rows, sandbox {} rows; differing only local: {:?}; only sandbox: {:?}; first differing sandbox row: {}; status {status}; faults set {:?}; acctor log tail:\n{}",
                account.id,
                account.item_id,
                local.len(),
                expected.len(),
                ids(&only_local),
                ids(&only_sandbox),
                only_sandbox.first().cloned().unwrap_or_default(),
                account.faults.lock().map(|f| f.clone()).unwrap_or_default(),
                acctor.log_tail(),
            );
        }
        // Polling an observable condition with a deadline, not sleeping to synchronize.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn sorted(rows: &[Value]) -> Vec<Value> {
    let mut rows = rows.to_vec();
    rows.sort_by(|a, b| {
        a["transaction_id"]
            .as_str()
            .cmp(&b["transaction_id"].as_str())
    });
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_acctor_never_loses_nor_doubles_acknowledged_webhooks() {
    kills_under_load(false).await;
}

/// The same on the PostgreSQL store: a SIGKILL aborts the transactions in flight, and
/// what a 2xx acknowledged was committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_postgres_sigkilled_acctor_never_loses_nor_doubles_acknowledged_webhooks() {
    kills_under_load(true).await;
}

/// Account openings under SIGKILL (see `crash/openings.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_acctor_opens_each_account_once_with_one_card() {
    openings::openings_under_kills(false).await;
}

/// The same on the PostgreSQL store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_postgres_sigkilled_acctor_opens_each_account_once_with_one_card() {
    openings::openings_under_kills(true).await;
}

/// A Stripe account's mirror under SIGKILL (see `crash/stripe.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_acctor_mirrors_a_changing_stripe_account_exactly() {
    stripe::stripe_under_kills(false).await;
}

/// The same on the PostgreSQL store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_postgres_sigkilled_acctor_mirrors_a_changing_stripe_account_exactly() {
    stripe::stripe_under_kills(true).await;
}

async fn kills_under_load(postgres: bool) {
    let profile = profile();
    let seed = seed();
    let started = Instant::now();
    let http = Http::new();
    let port = harness::reserve_port();
    let webhook_url = format!("http://127.0.0.1:{port}/webhooks/plaid");
    let sandbox = Sandbox::start(&webhook_url);
    let mut acctor = Acctor::new(port, &sandbox.url);
    if postgres {
        acctor.use_postgres();
    }
    acctor.start(&http).await;

    let mut accounts = Vec::with_capacity(profile.accounts);
    for n in 0..profile.accounts {
        accounts.push(
            link_new_item(
                &http,
                &sandbox,
                &acctor,
                profile.history,
                &format!("crash-owner-{n}"),
            )
            .await,
        );
    }
    let accounts = Arc::new(accounts);

    // A sandbox-wide fault under the per-item ones for the whole load.
    http.post_ok(
        &format!("{}/admin/faults", sandbox.url),
        &json!({ "webhook_duplicate_rate": 0.05 }),
    )
    .await;

    let counters = Arc::new(Counters::default());
    let mut workers = Vec::new();
    for w in 0..profile.workers {
        let mine: Vec<usize> = (0..profile.accounts)
            .filter(|i| i % profile.workers == w)
            .collect();
        if mine.is_empty() {
            continue;
        }
        workers.push(tokio::spawn(load_worker(
            http.clone(),
            sandbox.url.clone(),
            accounts.clone(),
            mine,
            profile.mutations,
            counters.clone(),
            seed.wrapping_add(1 + w as u64),
        )));
    }

    // Kill points spread over the load at random (seeded) progress marks.
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut marks: Vec<u64> = (0..profile.kills)
        .map(|_| rng.gen_range(profile.mutations / 20..profile.mutations * 19 / 20))
        .collect();
    marks.sort_unstable();
    let mut kills = 0;
    for mark in marks {
        while counters.mutations.load(Ordering::SeqCst) < mark {
            // Polling the load's progress counter; the load does not wait for us.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // A random extra moment so kills land at any phase of a webhook or a sync.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..30))).await;
        acctor.kill();
        kills += 1;
        acctor.start(&http).await;
    }
    for worker in workers {
        worker.await.expect("load worker");
    }

    // The load is over: clear every fault so convergence is deterministic, then crash
    // acctor one final time and bring it back.
    http.post_ok(
        &format!("{}/admin/faults", sandbox.url),
        &json!({
            "error_rate": { "transactions_sync": null, "transactions_get": null, "item_get": null },
            "error_mix": null,
            "latency_ms": { "transactions_sync": null, "transactions_get": null, "item_get": null },
            "webhook_drop_rate": null,
            "webhook_duplicate_rate": null,
            "webhook_reorder": null,
        }),
    )
    .await;
    for account in accounts.iter() {
        http.post_ok(
            &format!("{}/admin/items/{}/faults", sandbox.url, account.item_id),
            &no_faults(),
        )
        .await;
    }
    acctor.kill();
    kills += 1;
    acctor.start(&http).await;

    // 1. Acknowledged means durable: once acctor is quiescent (nothing pending, no sync
    //    running or owed), every item whose last webhook was acknowledged must already
    //    equal the sandbox. The ones that do not lost an acknowledged announcement.
    let (acked_last, owed): (Vec<&Account>, Vec<&Account>) = accounts
        .iter()
        .partition(|a| a.last_acked.load(Ordering::SeqCst));
    wait_quiescent(&http, &acctor, &accounts, profile.converge).await;
    let mut lost = Vec::new();
    for account in &acked_last {
        let expected = sandbox.transactions(&http, &account.item_id).await;
        let local = sorted(&acctor.transactions(&http, &account.id).await);
        if local != expected {
            let missing = expected.iter().filter(|r| !local.contains(r)).count();
            lost.push(format!(
                "account {} (item {}): {} local rows, {} sandbox rows, {missing} sandbox rows missing or stale; faults set {:?}",
                account.id,
                account.item_id,
                local.len(),
                expected.len(),
                account.faults.lock().map(|f| f.clone()).unwrap_or_default(),
            ));
        }
    }
    // 2. Items that missed their last webhook while acctor was down (Plaid would
    //    retry), and the ones check 1 found behind, get one more webhook: everything
    //    must then converge, so nothing is stuck and nothing doubled.
    let behind: Vec<&Account> = accounts
        .iter()
        .filter(|a| !a.last_acked.load(Ordering::SeqCst) || lost.iter().any(|l| l.contains(&a.id)))
        .collect();
    for account in &behind {
        let fired = http
            .post_ok(
                &format!("{}/admin/items/{}/webhook", sandbox.url, account.item_id),
                &json!({}),
            )
            .await;
        assert_eq!(
            fired["webhook_status"].as_u64(),
            Some(200),
            "retry webhook for {} not acknowledged: {fired}",
            account.item_id
        );
    }
    for account in accounts.iter() {
        converge(&http, &acctor, &sandbox, account, profile.converge).await;
    }

    // 3. Nothing doubled, nothing pending.
    let mut total_rows = 0;
    for account in accounts.iter() {
        let rows = acctor.transactions(&http, &account.id).await;
        let ids: HashSet<&str> = rows
            .iter()
            .map(|r| r["transaction_id"].as_str().expect("transaction_id"))
            .collect();
        assert_eq!(
            ids.len(),
            rows.len(),
            "account {} has duplicate transaction ids",
            account.id
        );
        assert_eq!(
            sorted(&rows),
            sandbox.transactions(&http, &account.item_id).await
        );
        total_rows += rows.len();
    }
    // Converged with the faults off: whatever still runs (a last poll) ends well, and
    // then nothing may be owed: no inbox entry, no retry record.
    wait_quiescent(&http, &acctor, &accounts, profile.converge).await;
    for account in accounts.iter() {
        let status = http
            .get_ok(&format!("{}/v1/accounts/{}/sync", acctor.url(), account.id))
            .await;
        assert_eq!(status["pending_inbox"].as_u64(), Some(0), "status {status}");
        assert!(
            status["retry"].is_null(),
            "retry record left behind: {status}"
        );
    }
    let overview = http
        .get_ok(&format!("{}/debug/overview", acctor.url()))
        .await;
    assert_eq!(
        overview["inbox_depth"].as_u64(),
        Some(0),
        "overview {overview}"
    );
    let metrics = http.get_text(&format!("{}/metrics", acctor.url())).await;
    assert_eq!(
        metric(&metrics, "acctor_retry_backlog"),
        Some(0.0),
        "retry records left behind:\n{metrics}"
    );

    let mutations = counters
        .mutations
        .load(Ordering::SeqCst)
        .min(profile.mutations);
    let acked = counters.acked.load(Ordering::SeqCst);
    println!(
        "crash summary: profile {} seed {seed} kills {kills} webhooks fired {mutations} acked {acked} unacked {} faults set {} accounts {} (last acked {}, retried {}) lost acknowledged {} rows {total_rows} seconds {:.1}",
        profile.name,
        counters.unacked.load(Ordering::SeqCst),
        counters.faults_set.load(Ordering::SeqCst),
        accounts.len(),
        acked_last.len(),
        owed.len(),
        lost.len(),
        started.elapsed().as_secs_f64(),
    );
    assert!(kills > profile.kills, "every planned kill happened");
    assert!(acked > 0, "some webhooks were acknowledged");
    assert!(
        lost.is_empty(),
        "acknowledged webhooks lost across SIGKILL (seed {seed}): {} account(s) behind the sandbox with nothing pending:\n{}",
        lost.len(),
        lost.join("\n")
    );
}

/// Creates a sandbox item with `history` transactions and links it to `owner`; linking
/// starts the initial sync, so nothing is owed beyond it yet.
async fn link_new_item(
    http: &Http,
    sandbox: &Sandbox,
    acctor: &Acctor,
    history: u32,
    owner: &str,
) -> Account {
    let created = http
        .post_ok(
            &format!("{}/admin/items", sandbox.url),
            &json!({ "history": history }),
        )
        .await;
    let item_id = created["item_id"].as_str().expect("item_id").to_string();
    let linked = http
        .post_status(
            &format!("{}/v1/accounts", acctor.url()),
            &json!({
                "provider": "plaid",
                "item_id": item_id,
                "access_token": created["access_token"],
                "owner_id": owner,
                "aliases": [],
            }),
            201,
        )
        .await;
    Account {
        id: linked["id"].as_str().expect("account id").to_string(),
        item_id,
        last_acked: AtomicBool::new(true),
        faults: std::sync::Mutex::new(Vec::new()),
    }
}

/// Waits until the backlog shows an empty inbox and no account has anything pending,
/// running, scheduled or waiting for a retry: after that nothing more will happen
/// without a new webhook.
async fn wait_quiescent(http: &Http, acctor: &Acctor, accounts: &[Account], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let overview = http
            .get_ok(&format!("{}/debug/overview", acctor.url()))
            .await;
        let mut busy = None;
        if overview["inbox_depth"].as_u64() != Some(0)
            || overview["retry_backlog"].as_u64() != Some(0)
        {
            busy = Some(overview);
        }
        for account in accounts {
            if busy.is_some() {
                break;
            }
            let status = http
                .get_ok(&format!("{}/v1/accounts/{}/sync", acctor.url(), account.id))
                .await;
            let state = status["state"].as_str().unwrap_or("?");
            if status["pending_inbox"].as_u64() != Some(0)
                || !status["retry"].is_null()
                || matches!(state, "syncing" | "scheduled" | "backoff" | "restarting")
            {
                busy = Some(status);
            }
        }
        match busy {
            None => return,
            Some(what) => assert!(
                Instant::now() < deadline,
                "acctor never became quiescent: {what}; log tail:\n{}",
                acctor.log_tail()
            ),
        }
        // Polling an observable condition with a deadline, not sleeping to synchronize.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The value of an unlabelled sample in a Prometheus text exposition.
fn metric(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (sample, value) = line.split_once(' ')?;
        (sample == name).then(|| value.trim().parse().ok())?
    })
}

/// Polls `probe` until it returns `Some`, failing with `what` at the deadline.
async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        // Polling an observable condition with a deadline, not sleeping to synchronize.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The interleaving the random test found, made deterministic: webhook W1 starts sync 1,
/// whose page is computed before mutation 2; W2 (byte-identical, announcing mutation 2)
/// arrives while sync 1 runs; sync 1 commits and consumes W1's entry; acctor is
/// SIGKILLed before any follow-up sync. Before the fix, W2 was acknowledged as a
/// duplicate with nothing written and mutation 2 was lost; now a repeat of an entry a
/// running sync has already read is appended as a new event, so it survives the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_duplicate_webhook_survives_a_kill_after_the_sync_it_coalesced_into() {
    duplicate_during_sync(true, false).await;
}

/// The same interleaving on the PostgreSQL store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_postgres_acknowledged_duplicate_webhook_survives_a_kill_after_the_sync_it_coalesced_into(
) {
    duplicate_during_sync(true, true).await;
}

/// The control for the reproduction above: the same steps without the kill converge
/// (the in-memory follow-up sync runs), so only the crash loses the announcement.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_webhook_during_a_sync_is_covered_by_a_follow_up_sync() {
    duplicate_during_sync(false, false).await;
}

async fn duplicate_during_sync(kill: bool, postgres: bool) {
    let http = Http::new();
    let port = harness::reserve_port();
    let sandbox = Sandbox::start(&format!("http://127.0.0.1:{port}/webhooks/plaid"));
    let mut acctor = Acctor::new(port, &sandbox.url);
    if postgres {
        acctor.use_postgres();
    }
    // The follow-up sync waits out this interval, which holds the window open.
    acctor.set_env("ACCTOR__ACTORS__MIN_SYNC_INTERVAL", "5s");
    acctor.start(&http).await;
    let account = link_new_item(&http, &sandbox, &acctor, 20, "dup-owner").await;
    let item_id = account.item_id.clone();
    converge(&http, &acctor, &sandbox, &account, Duration::from_secs(30)).await;
    let status_url = format!("{}/v1/accounts/{}/sync", acctor.url(), account.id);
    let syncs_before = http.get_ok(&status_url).await["sync_count"]
        .as_u64()
        .expect("sync_count");

    // Sync 1 answers with the data as of its start, 800 ms later.
    http.post_ok(
        &format!("{}/admin/items/{item_id}/faults", sandbox.url),
        &json!({ "sync_latency_after_ms": 800 }),
    )
    .await;
    let mutate_url = format!("{}/admin/items/{item_id}/mutate", sandbox.url);
    let w1 = http.post_ok(&mutate_url, &json!({ "add": 1 })).await;
    assert_eq!(w1["webhook_status"].as_u64(), Some(200), "{w1}");
    let stats_url = format!("{}/admin/items/{item_id}/stats", sandbox.url);
    wait_for("sync 1 in flight", Duration::from_secs(10), || async {
        let stats = http.get_ok(&stats_url).await;
        (stats["in_flight_syncs"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    http.post_ok(
        &format!("{}/admin/items/{item_id}/faults", sandbox.url),
        &json!({ "sync_latency_after_ms": 0 }),
    )
    .await;
    let w2 = http.post_ok(&mutate_url, &json!({ "add": 1 })).await;
    assert_eq!(w2["webhook_status"].as_u64(), Some(200), "{w2}");
    // Sync 1 commits; the follow-up is only scheduled, in memory.
    wait_for("sync 1 committed", Duration::from_secs(10), || async {
        let status = http.get_ok(&status_url).await;
        (status["sync_count"].as_u64() > Some(syncs_before)).then_some(())
    })
    .await;
    if kill {
        acctor.kill();
        acctor.start(&http).await;
    }
    // Longer than the follow-up interval: an owed sync kept on disk would have run.
    converge(&http, &acctor, &sandbox, &account, Duration::from_secs(15)).await;
}

/// SIGTERM in the middle of a webhook burst: acctor drains (webhooks still arriving get
/// 503 with Retry-After, or no connection at all), exits 0 within a bound, and after a
/// restart on the same data dir every webhook it acknowledged has been processed: each
/// account equals the sandbox, nothing is pending, no transaction is duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_a_burst_exits_cleanly_and_loses_nothing_acknowledged() {
    const ACCOUNTS: usize = 6;
    const BURST_PER_ACCOUNT: u64 = 25;
    const EXIT_WITHIN: Duration = Duration::from_secs(15);
    let http = Http::new();
    let port = harness::reserve_port();
    let sandbox = Sandbox::start(&format!("http://127.0.0.1:{port}/webhooks/plaid"));
    let mut acctor = Acctor::new(port, &sandbox.url);
    acctor.start(&http).await;
    let mut accounts = Vec::new();
    for n in 0..ACCOUNTS {
        accounts
            .push(link_new_item(&http, &sandbox, &acctor, 20, &format!("term-owner-{n}")).await);
    }
    for account in &accounts {
        converge(&http, &acctor, &sandbox, account, Duration::from_secs(30)).await;
    }
    let accounts = Arc::new(accounts);

    // The burst: one sequential mutator per account, so "its last webhook was
    // acknowledged" is well defined; every answer acctor gives is recorded.
    let answered = Arc::new(AtomicU64::new(0));
    let statuses = Arc::new(std::sync::Mutex::new(Vec::<Option<u64>>::new()));
    let mut burst = Vec::new();
    for index in 0..ACCOUNTS {
        let (http, url, accounts) = (http.clone(), sandbox.url.clone(), accounts.clone());
        let (answered, statuses) = (answered.clone(), statuses.clone());
        burst.push(tokio::spawn(async move {
            let account = &accounts[index];
            for _ in 0..BURST_PER_ACCOUNT {
                let answer = http
                    .post_ok(
                        &format!("{url}/admin/items/{}/mutate", account.item_id),
                        &json!({ "add": 1, "modify": 1, "remove": 0, "fire_webhook": true }),
                    )
                    .await;
                let status = answer["webhook_status"].as_u64();
                let acked = status.is_some_and(|s| (200..300).contains(&s));
                account.last_acked.store(acked, Ordering::SeqCst);
                answered.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut seen) = statuses.lock() {
                    seen.push(status);
                }
            }
        }));
    }
    // A prober hitting acctor directly: before the signal an unsigned webhook is a 401;
    // while draining it must be a 503 with Retry-After and a JSON error; never a 2xx.
    let stop_probing = Arc::new(AtomicBool::new(false));
    let prober = {
        let (url, stop) = (acctor.url(), stop_probing.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("client");
            let mut drained = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let Ok(response) = client
                    .post(format!("{url}/webhooks/plaid"))
                    .header("content-type", "application/json")
                    .body(r#"{"webhook_type":"TRANSACTIONS"}"#)
                    .send()
                    .await
                else {
                    // Not listening any more (or not yet again): nothing acknowledged.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                };
                let status = response.status().as_u16();
                let retry_after = response.headers().contains_key("retry-after");
                let body: Value = response.json().await.unwrap_or(Value::Null);
                assert!(!(200..300).contains(&status), "acknowledged: {body}");
                if status == 503 {
                    assert!(retry_after, "503 without Retry-After: {body}");
                    assert_eq!(body["error"]["code"], "shutting_down", "{body}");
                    drained += 1;
                } else {
                    assert_eq!(status, 401, "{body}");
                }
            }
            drained
        })
    };

    // SIGTERM once about a third of the burst has been answered.
    let third = ACCOUNTS as u64 * BURST_PER_ACCOUNT / 3;
    wait_for("a third of the burst", Duration::from_secs(60), || async {
        (answered.load(Ordering::SeqCst) >= third).then_some(())
    })
    .await;
    let signalled = Instant::now();
    let exit = acctor.terminate(EXIT_WITHIN).await;
    let took = signalled.elapsed();
    let exit = exit.unwrap_or_else(|| panic!("no exit within {EXIT_WITHIN:?}"));
    assert!(
        exit.success(),
        "exit status {exit}; log tail:\n{}",
        acctor.log_tail()
    );
    for task in burst {
        task.await.expect("burst task");
    }
    stop_probing.store(true, Ordering::SeqCst);
    let drained_503s = prober.await.expect("prober");
    let seen = statuses.lock().map(|s| s.clone()).unwrap_or_default();
    for status in &seen {
        // 200: acknowledged; 503: refused while draining; none: not listening.
        assert!(
            matches!(status, None | Some(200) | Some(503)),
            "unexpected webhook answer {status:?}: {seen:?}"
        );
    }
    let acked = seen.iter().filter(|s| **s == Some(200)).count();

    // Restart on the same data dir: what was acknowledged is processed without any new
    // webhook; an item whose last webhook was refused gets the provider's retry.
    acctor.start(&http).await;
    for account in accounts.iter() {
        if !account.last_acked.load(Ordering::SeqCst) {
            continue;
        }
        converge(&http, &acctor, &sandbox, account, Duration::from_secs(30)).await;
    }
    for account in accounts.iter() {
        if account.last_acked.load(Ordering::SeqCst) {
            continue;
        }
        let fired = http
            .post_ok(
                &format!("{}/admin/items/{}/webhook", sandbox.url, account.item_id),
                &json!({}),
            )
            .await;
        assert_eq!(fired["webhook_status"].as_u64(), Some(200), "{fired}");
        converge(&http, &acctor, &sandbox, account, Duration::from_secs(30)).await;
    }
    wait_quiescent(&http, &acctor, &accounts, Duration::from_secs(30)).await;
    for account in accounts.iter() {
        let rows = acctor.transactions(&http, &account.id).await;
        let ids: HashSet<&str> = rows
            .iter()
            .filter_map(|r| r["transaction_id"].as_str())
            .collect();
        assert_eq!(ids.len(), rows.len(), "duplicated rows in {}", account.id);
    }
    println!(
        "sigterm summary: answered {} acked {acked} refused or unanswered {} drain 503s seen by the prober {drained_503s} exit after {:.2}s",
        seen.len(),
        seen.len() - acked,
        took.as_secs_f64()
    );
}
