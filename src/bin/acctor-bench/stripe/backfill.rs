//! `stripe backfill`: one account's objects, from the link to every type visible, and
//! the fetch floor that splits that time into listing and the rest.

use std::time::{Duration, Instant};

use anyhow::Context;

use acctor::domain::stripe::{ObjectType, TypeBackfill};
use acctor::providers::stripe::{ListRequest, StripeAccess, StripeApi};
use acctor::providers::stripe::{StripeClient, StripeClientConfig};
use acctor::sandbox::SandboxAccount;

use super::harness::{mib, peak_rss_bytes, Bench};
use super::RunOptions;
use crate::rss_bytes;

/// The table's header.
pub(super) fn print_header() {
    println!("| store | objects | types | run | link → all visible (s) | objects/s | pages | pages/s | ms/page | fetch floor (s) | rest: commits… (s) | RSS before link | RSS after | peak RSS | one report GET (ms) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
}

/// One run: a fresh sandbox and app, one account of `objects` over `types`.
pub(super) async fn run(
    options: RunOptions,
    objects: usize,
    types: &[ObjectType],
    poll: &str,
    run: u32,
) -> anyhow::Result<()> {
    let store_name = options.store_name();
    let bench = Bench::start(options).await?;
    let per_type: Vec<usize> = (0..types.len())
        .map(|i| objects / types.len() + usize::from(i < objects % types.len()))
        .collect();
    let generating = Instant::now();
    let account = bench.account(types, &per_type);
    eprintln!(
        "run {run}: {objects} objects over {} type(s) generated in {:?}",
        types.len(),
        generating.elapsed()
    );
    let rss_before = rss_bytes();
    let started = Instant::now();
    let id = bench.link(&account, types).await?;
    bench.wait_visible(&id, types.len(), poll).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let rss_after = rss_bytes();
    let peak = peak_rss_bytes();

    let state = bench.sync_state(&id).await?;
    let pages: u64 = state.backfill.values().map(|b| b.pages).sum();
    let listed: u64 = state.backfill.values().map(|b| b.objects).sum();
    anyhow::ensure!(
        listed == objects as u64,
        "{listed} objects listed, {objects} in the account"
    );
    let reading = Instant::now();
    let report = bench.report(id.as_str()).await?;
    let report_ms = reading.elapsed().as_secs_f64() * 1000.0;
    let held: u64 = report["types"]
        .as_array()
        .map_or(0, |t| t.iter().filter_map(|t| t["held"].as_u64()).sum());
    anyhow::ensure!(
        held == objects as u64,
        "{held} objects held, {objects} in the account"
    );
    let stats = bench.stripe().stats(&account.id);
    eprintln!(
        "run {run}: sandbox saw {} requests ({:?}), rate limited {}",
        stats.requests, stats.by_endpoint, stats.rate_limited
    );

    let floor = fetch_floor(&bench, &account, types).await?;
    println!(
        "| {store_name} | {objects} | {} | {run} | {elapsed:.2} | {:.0} | {pages} | {:.0} | {:.2} | {floor:.2} | {:.2} | {} MiB | {} MiB | {} MiB | {report_ms:.0} |",
        types.len(),
        objects as f64 / elapsed,
        pages as f64 / elapsed,
        elapsed * 1000.0 / pages as f64,
        elapsed - floor,
        mib(rss_before),
        mib(rss_after),
        mib(peak),
    );
    bench.stop().await
}

/// Lists every page of `types` again, one after the other as the backfill does, with
/// acctor's own client (its HTTP, its decoding into JSON values) and nothing else:
/// the part of a backfill that is listing. Seconds.
async fn fetch_floor(
    bench: &Bench,
    account: &SandboxAccount,
    types: &[ObjectType],
) -> anyhow::Result<f64> {
    let client = StripeClient::new(StripeClientConfig {
        base_url: bench.stripe_base_url.clone(),
        timeout: Duration::from_secs(30),
        test_rate: 0,
        live_rate: 0,
    })?;
    let access = StripeAccess {
        api_key: &account.api_key,
        account: &account.id,
        connect: false,
        livemode: false,
    };
    // The window a backfill starting now lists first: everything.
    let window = TypeBackfill::new(bench.stripe().now())
        .windows
        .first()
        .cloned()
        .context("a new backfill has a window")?;
    let started = Instant::now();
    for object_type in types {
        let mut after: Option<String> = None;
        loop {
            let page = client
                .list(
                    access,
                    *object_type,
                    ListRequest {
                        window: window.clone(),
                        starting_after: after.as_deref(),
                        limit: 100,
                    },
                )
                .await?;
            let last = page
                .value
                .data
                .last()
                .and_then(|o| o["id"].as_str())
                .map(str::to_owned);
            match (page.value.has_more, last) {
                (true, Some(last)) => after = Some(last),
                _ => break,
            }
        }
    }
    Ok(started.elapsed().as_secs_f64())
}
