//! A Stripe account's mirror under SIGKILL: the sandbox's Stripe (in the `acctor
//! sandbox` process, alive throughout) keeps changing objects and sending signed events
//! while acctor is killed at random moments and restarted; events sent to a dead acctor
//! fail for good (one delivery attempt), others arrive shuffled and duplicated. At the
//! end, with no further event, acctor's copy of every mirrored type equals Stripe's:
//! what a 2xx acknowledged was on disk, and what never arrived was caught up from the
//! Events API after the restart. Each object is held once (ids are the keys); repeats
//! are counted as stale, not applied twice.
//!
//! Meanwhile products are created through acctor's push queue. Every change acctor
//! acknowledged (202) ends pushed, and Stripe created exactly one product per change
//! (the sandbox counts creates per idempotency key): a push cut by a kill after Stripe
//! did the work is sent again under the same key and answered from Stripe's record.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use super::harness::{self, Acctor, Http, Sandbox};

const TYPES: [&str; 4] = ["products", "customers", "subscriptions", "invoices"];

/// The size of one run.
struct StripeProfile {
    changes: u64,
    pushes: usize,
    kills: usize,
    converge: Duration,
}

fn stripe_profile() -> StripeProfile {
    match std::env::var("ACCTOR_CRASH_LONG").as_deref() {
        Ok("1") | Ok("true") | Ok("yes") => StripeProfile {
            changes: 3_000,
            pushes: 600,
            kills: 15,
            converge: Duration::from_secs(180),
        },
        _ => StripeProfile {
            changes: 300,
            pushes: 60,
            kills: 3,
            converge: Duration::from_secs(90),
        },
    }
}

/// Every object of one type at the sandbox's Stripe, through its own API, by id.
async fn remote(http: &Http, base: &str, key: &str, object_type: &str) -> BTreeMap<String, Value> {
    let mut all = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/{object_type}?limit=100");
        if object_type == "subscriptions" {
            url.push_str("&status=all");
        }
        if let Some(after) = &after {
            url.push_str(&format!("&starting_after={after}"));
        }
        let page: Value = http
            .client()
            .get(&url)
            .bearer_auth(key)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        let data = page["data"].as_array().cloned().unwrap_or_default();
        for object in &data {
            all.insert(
                object["id"].as_str().expect("id").to_owned(),
                object.clone(),
            );
        }
        if page["has_more"] != true {
            return all;
        }
        after = data
            .last()
            .and_then(|o| o["id"].as_str())
            .map(str::to_owned);
    }
}

/// acctor's copy of one type, by id (`None` while the type is still being backfilled).
async fn local(
    http: &Http,
    acctor: &str,
    account: &str,
    object_type: &str,
) -> Option<BTreeMap<String, Value>> {
    let mut all = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{acctor}/v1/accounts/{account}/objects/{object_type}?limit=1000");
        if let Some(after) = &after {
            url.push_str(&format!("&after={after}"));
        }
        let response = http.client().get(&url).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let page: Value = response.json().await.ok()?;
        for object in page["objects"].as_array().cloned().unwrap_or_default() {
            all.insert(object["id"].as_str().expect("id").to_owned(), object);
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return Some(all),
        }
    }
}

pub(super) async fn stripe_under_kills(postgres: bool) {
    let profile = stripe_profile();
    let mut rng = ChaCha8Rng::seed_from_u64(super::seed() ^ 0x0057_171e);
    let started = Instant::now();
    let http = Http::new();
    let port = harness::reserve_port();
    let sandbox = Sandbox::start(&format!("http://127.0.0.1:{port}/webhooks/plaid"));
    let mut acctor = Acctor::new(port, &sandbox.url);
    if postgres {
        acctor.use_postgres();
    }
    acctor.set_env("ACCTOR__SWEEPER__TICK", "50ms");
    acctor.start(&http).await;

    let admin = format!("{}/stripe/admin/accounts", sandbox.url);
    let account = http.post_status(&admin, &json!({}), 201).await;
    let id = account["id"].as_str().expect("id").to_owned();
    let key = account["api_key"].as_str().expect("key").to_owned();
    http.put_ok(
        &format!("{admin}/{id}/webhook_url"),
        &json!({"url": format!("{}/webhooks/stripe/{id}", acctor.url())}),
    )
    .await;
    // A dead acctor loses its deliveries for good; the rest arrive shuffled, some twice.
    http.put_ok(
        &format!("{admin}/{id}/faults"),
        &json!({"webhook_attempts": 1, "webhook_shuffle": true, "webhook_duplicate_rate": 0.1}),
    )
    .await;
    for object_type in TYPES {
        http.post_ok(
            &format!("{admin}/{id}/generate"),
            &json!({"type": object_type, "count": 150}),
        )
        .await;
    }
    http.post_status(
        &format!("{}/v1/accounts", acctor.url()),
        &json!({
            "provider": "stripe", "item_id": id, "access_token": key, "owner_id": "crash",
            "webhook_secrets": [account["webhook_secret"]], "object_types": TYPES,
        }),
        201,
    )
    .await;

    // The load: changes at the sandbox's Stripe, a few at a time, until done.
    let changed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let load = {
        let (http, url, changed, done) = (
            http.clone(),
            format!("{admin}/{id}/mutate"),
            changed.clone(),
            done.clone(),
        );
        let total = profile.changes;
        tokio::spawn(async move {
            while changed.load(Ordering::SeqCst) < total {
                let answer = http.post_ok(&url, &json!({"changes": 5})).await;
                changed.fetch_add(
                    answer["changed"].as_u64().unwrap_or(0).max(1),
                    Ordering::SeqCst,
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    // Local changes, pushed through acctor: the ones it acknowledged must land once.
    let pusher = {
        let (http, url, count) = (
            http.clone(),
            format!("{}/v1/stripe/{id}/products", acctor.url()),
            profile.pushes,
        );
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut n = 0;
            // Until `count` changes were acknowledged (bounded: a dead acctor refuses).
            while acknowledged.len() < count && n < count * 50 {
                let sent = http
                    .client()
                    .post(&url)
                    .json(&json!({"name": format!("Pushed {n}"), "metadata": {"crash": "yes"}}))
                    .send()
                    .await;
                n += 1;
                match sent {
                    Ok(response) if response.status().as_u16() == 202 => {
                        let answer: Value = response.json().await.expect("json");
                        acknowledged.push(answer["id"].as_str().expect("id").to_owned());
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    // Killed before it answered (or not started yet): not acknowledged,
                    // so never sent again; the next change waits a little for acctor.
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            acknowledged
        })
    };
    let mut marks: Vec<u64> = (0..profile.kills)
        .map(|_| rng.gen_range(profile.changes / 10..profile.changes * 9 / 10))
        .collect();
    marks.sort_unstable();
    let mut kills = 0;
    for mark in marks {
        while changed.load(Ordering::SeqCst) < mark {
            // Polling the load's progress counter; the load does not wait for us.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..40))).await;
        acctor.kill();
        kills += 1;
        acctor.start(&http).await;
    }
    load.await.expect("load");
    let acknowledged = pusher.await.expect("pusher");
    assert!(done.load(Ordering::SeqCst));
    acctor.kill();
    kills += 1;
    acctor.start(&http).await;

    // No more events: what acctor holds must become what Stripe holds.
    let base = format!("{}/stripe", sandbox.url);
    let deadline = Instant::now() + profile.converge;
    // The queued changes first: until they are pushed, Stripe's products still change.
    let pushes = settled_pushes(&http, &acctor, &id, deadline).await;
    for object_type in TYPES {
        let want = remote(&http, &base, &key, object_type).await;
        loop {
            let have = local(&http, &acctor.url(), &id, object_type).await;
            if have.as_ref() == Some(&want) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{object_type} never converged ({} held, {} at Stripe); log tail:\n{}",
                have.map_or(0, |h| h.len()),
                want.len(),
                acctor.log_tail()
            );
            // Polling an observable end state with a deadline, not sleeping to synchronize.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The first sync after the last start catches up from the Events API; equality
    // can be reached before it commits (when no event was lost since the last kill).
    let report = loop {
        let report = http
            .get_ok(&format!("{}/v1/accounts/{id}/stripe", acctor.url()))
            .await;
        if report["catch_ups"].as_u64().unwrap_or(0) >= 1 {
            break report;
        }
        assert!(Instant::now() < deadline, "never caught up: {report:#}");
        // Polling an observable end state with a deadline, not sleeping to synchronize.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stats = http.get_ok(&format!("{admin}/{id}/stats")).await;
    let creates = stats["creates_by_idempotency_key"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert!(
        creates.values().all(|n| n == 1),
        "a change created more than one product: {creates:?}"
    );
    assert!(!acknowledged.is_empty(), "some changes were acknowledged");
    for push_id in &acknowledged {
        let push = pushes
            .get(push_id)
            .unwrap_or_else(|| panic!("acknowledged {push_id} is not in the queue"));
        assert_eq!(push["status"], "pushed", "{push:#}");
        let key = push["idempotency_key"].as_str().expect("key");
        assert_eq!(creates.get(key), Some(&json!(1)), "{push_id} created once");
    }
    eprintln!(
        "stripe crash run: {kills} kills, {} changes, {} of {} pushes acknowledged and \
         pushed once, {} webhooks delivered, {} failed, {} events applied, {} stale, \
         {} re-fetches, {} catch-ups, in {:?}",
        changed.load(Ordering::SeqCst),
        acknowledged.len(),
        profile.pushes,
        stats["webhooks_delivered"],
        stats["webhooks_failed"],
        report["events_applied"],
        report["events_stale"],
        report["refetches"],
        report["catch_ups"],
        started.elapsed()
    );
    acctor.terminate(Duration::from_secs(30)).await;
}

/// The account's push queue once nothing is pending, by change id.
async fn settled_pushes(
    http: &Http,
    acctor: &Acctor,
    account: &str,
    deadline: Instant,
) -> BTreeMap<String, Value> {
    loop {
        let mut all = BTreeMap::new();
        let mut after: Option<String> = None;
        let backlog = loop {
            let mut url = format!("{}/v1/stripe/{account}/pushes?limit=1000", acctor.url());
            if let Some(after) = &after {
                url.push_str(&format!("&after={after}"));
            }
            let page = http.get_ok(&url).await;
            for push in page["pushes"].as_array().cloned().unwrap_or_default() {
                all.insert(push["id"].as_str().expect("id").to_owned(), push);
            }
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => break page["backlog"].clone(),
            }
        };
        // The page and the backlog are two reads: both must say nothing is pending.
        if backlog["pending"] == 0 && all.values().all(|p| p["status"] != "pending") {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "pushes never settled: {backlog:#}; log tail:\n{}",
            acctor.log_tail()
        );
        // Polling an observable end state with a deadline, not sleeping to synchronize.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
