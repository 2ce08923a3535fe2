//! Account openings under SIGKILL: creates, status webhooks and card steps are cut at
//! random moments, and at the end every opening acctor acknowledged (202, or 409 naming
//! the one a lost answer had created) is terminal with the bank's own decision, each
//! customer has one opening at the bank and at most one card (exactly one when the
//! account was opened), and nothing is owed.
//!
//! The bank (the `acctor sandbox` process) stays up; acctor polls every 300 ms here, so
//! statuses whose webhooks hit a dead acctor are found by the polling fallback, as in
//! production they would be within 30 minutes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use super::harness::{self, Acctor, Http, Sandbox};

/// The size of one run.
struct OpeningsProfile {
    openings: u64,
    kills: usize,
    workers: usize,
    converge: Duration,
}

fn openings_profile() -> OpeningsProfile {
    match std::env::var("ACCTOR_CRASH_LONG").as_deref() {
        Ok("1") | Ok("true") | Ok("yes") => OpeningsProfile {
            openings: 600,
            kills: 15,
            workers: 8,
            converge: Duration::from_secs(180),
        },
        _ => OpeningsProfile {
            openings: 60,
            kills: 3,
            workers: 4,
            converge: Duration::from_secs(90),
        },
    }
}

const MARKETS: [&str; 4] = ["NL", "BE", "DE", "FR"];

/// Creates the opening of `customer` until acctor answers (202, new or replayed by its
/// idempotency key, or 409 with the customer's opening in progress); returns its id.
async fn open_until_answered(
    http: &Http,
    acctor_url: &str,
    customer: &str,
    market: &str,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let sent = http
            .client()
            .post(format!("{acctor_url}/v1/operations/account-openings"))
            // A retry after a lost answer must find the first create's operation, even
            // when that one has completed meanwhile.
            .header("idempotency-key", format!("crash-{customer}"))
            .json(&json!({
                "customer_id": customer,
                "market": market,
                "segment": "company",
                "legal_name": format!("{customer} BV"),
            }))
            .send()
            .await;
        if let Ok(response) = sent {
            let status = response.status().as_u16();
            if let Ok(body) = response.json::<Value>().await {
                match status {
                    202 => return body["id"].as_str().expect("id").to_string(),
                    409 => return body["operation"]["id"].as_str().expect("id").to_string(),
                    _ => {}
                }
            }
        }
        assert!(Instant::now() < deadline, "{customer}: never answered");
        // acctor is down (killed): wait for it to come back, as a client would.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(super) async fn openings_under_kills(postgres: bool) {
    let profile = openings_profile();
    let seed = super::seed();
    let started = Instant::now();
    let http = Http::new();
    let port = harness::reserve_port();
    let sandbox = Sandbox::start(&format!("http://127.0.0.1:{port}/webhooks/plaid"));
    let mut acctor = Acctor::new(port, &sandbox.url);
    if postgres {
        acctor.use_postgres();
    }
    for (key, value) in [
        ("ACCTOR__OPERATIONS__POLL_INTERVAL", "300ms"),
        ("ACCTOR__OPERATIONS__SLOW_POLL_INTERVAL", "300ms"),
        ("ACCTOR__OPERATIONS__STEP_RETRY_INITIAL", "20ms"),
        ("ACCTOR__OPERATIONS__STEP_RETRY_MAX", "200ms"),
        ("ACCTOR__OPERATIONS__MAX_STEP_ATTEMPTS", "100"),
        ("ACCTOR__SWEEPER__TICK", "50ms"),
    ] {
        acctor.set_env(key, value);
    }
    acctor.start(&http).await;
    let bank = format!("{}/bank/admin", sandbox.url);
    // Decisions a little later than the create, so kills land between the steps; one
    // market rejects a share; duplicates, card failures and status errors throughout.
    for (market, settings) in [
        ("NL", json!({"delay_ms": 20})),
        ("BE", json!({"delay_ms": 40, "reject_rate": 0.25})),
        ("DE", json!({"delay_ms": 0})),
        ("FR", json!({"delay_ms": 60})),
    ] {
        http.put_ok(&format!("{bank}/markets/{market}"), &settings)
            .await;
    }
    http.put_ok(
        &format!("{bank}/faults"),
        &json!({"webhook_duplicate_rate": 0.1, "status_error_rate": 0.1, "card_fail_next": 5}),
    )
    .await;

    let created = Arc::new(AtomicU64::new(0));
    let ids: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..profile.workers {
        let (http, url, created, ids) = (http.clone(), acctor.url(), created.clone(), ids.clone());
        let (total, workers_n) = (profile.openings, profile.workers as u64);
        workers.push(tokio::spawn(async move {
            for n in (w as u64..total).step_by(workers_n as usize) {
                let customer = format!("crash-customer-{n}");
                let market = MARKETS[(n % 4) as usize];
                let id = open_until_answered(&http, &url, &customer, market).await;
                ids.lock().expect("lock").insert(customer, id);
                created.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0be2);
    let mut marks: Vec<u64> = (0..profile.kills)
        .map(|_| rng.gen_range(profile.openings / 10..profile.openings * 9 / 10))
        .collect();
    marks.sort_unstable();
    let mut kills = 0;
    for mark in marks {
        while created.load(Ordering::SeqCst) < mark {
            // Polling the load's progress counter; the load does not wait for us.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..40))).await;
        acctor.kill();
        kills += 1;
        acctor.start(&http).await;
    }
    for worker in workers {
        worker.await.expect("load worker");
    }
    acctor.kill();
    kills += 1;
    acctor.start(&http).await;

    // Every acknowledged opening ends with the bank's decision.
    let ids = ids.lock().expect("lock").clone();
    assert_eq!(ids.len() as u64, profile.openings);
    let deadline = Instant::now() + profile.converge;
    let mut finished: HashMap<String, Value> = HashMap::new();
    while finished.len() < ids.len() {
        for (customer, id) in &ids {
            if finished.contains_key(customer) {
                continue;
            }
            let op = http
                .get_ok(&format!("{}/v1/operations/{id}", acctor.url()))
                .await;
            if matches!(op["state"].as_str(), Some("completed" | "rejected")) {
                finished.insert(customer.clone(), op);
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} openings never finished; log tail:\n{}",
            ids.len() - finished.len(),
            ids.len(),
            acctor.log_tail()
        );
        // Polling observable end states with a deadline, not sleeping to synchronize.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = http.get_ok(&format!("{bank}/stats")).await;
    let cards = &stats["cards_issued_by_customer"];
    let mut completed = 0;
    for (customer, op) in &finished {
        // One opening per customer at acctor (a retried create found the first).
        let listed = http
            .get_ok(&format!(
                "{}/v1/operations?customer_id={customer}",
                acctor.url()
            ))
            .await;
        assert_eq!(
            listed["operations"].as_array().map(Vec::len),
            Some(1),
            "{customer}: {listed}"
        );
        // The bank's own decision, IBAN included.
        let tracking = op["tracking_id"].as_str().expect("tracking id");
        let at_bank = http.get_ok(&format!("{bank}/openings/{tracking}")).await;
        assert_eq!(
            at_bank["status"], op["bank_status"],
            "{customer}: {op} vs {at_bank}"
        );
        assert_eq!(at_bank["iban"], op["iban"], "{customer}");
        let expected_cards = u64::from(op["state"] == "completed");
        completed += expected_cards;
        assert_eq!(
            cards[customer.as_str()].as_u64().unwrap_or(0),
            expected_cards,
            "{customer} ({}): cards at the bank {cards}",
            op["state"]
        );
    }
    // One opening at the bank per operation: every retried create reused its key.
    assert_eq!(
        stats["openings"].as_u64(),
        Some(profile.openings),
        "bank stats {stats}"
    );
    let overview = http
        .get_ok(&format!("{}/debug/overview", acctor.url()))
        .await;
    println!(
        "openings crash summary: seed {seed} kills {kills} openings {} completed {completed} rejected {} creates at the bank {} cards {} seconds {:.1} overview {overview}",
        profile.openings,
        profile.openings - completed,
        stats["create_calls"],
        stats["cards_issued"],
        started.elapsed().as_secs_f64(),
    );
    assert!(kills > profile.kills);
}
