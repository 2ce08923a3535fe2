//! acctor's benchmarks, run against the real server and the real sandbox bank in one
//! process (separate runtimes for the load generator and the server), results printed
//! as Markdown rows for BENCHMARKS.md.
//!
//! - `ingest`: durable, verified webhook ingest at fixed open-loop rates. Latency is
//!   measured from each request's *intended* send time, so a stalled server is charged
//!   for every request it delayed (coordinated-omission correction). Side by side: the
//!   same HTTP stack answering 200 without doing anything, and the store's own durable
//!   write ceiling (concurrent ingest + group commit, no HTTP).
//! - `initial-sync`: link an item with 50,000 transactions, time until committed.
//! - `accounts`: link 1,000,000 accounts, report RSS per idle (passivated) account and
//!   the p99 time to activate a passivated account.
//! - `stripe backfill|events|fleet`: the Stripe mirror (module `stripe`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::http::StatusCode;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use secrecy::ExposeSecret;
use serde_json::json;

use acctor::app::App;
use acctor::config::Settings;
use acctor::domain::{AccessToken, Account, AccountId, ProviderKind};
use acctor::sandbox::{Sandbox, SandboxConfig};
use acctor::store::{AccountStore, Durability};
use acctor::store::{IncomingWebhook, SledStore, SledStoreConfig};

#[path = "acctor-bench/stripe/mod.rs"]
mod stripe;

/// glibc's allocator spends most of a large sync in lock contention and `malloc_consolidate`
/// (measured with perf); mimalloc's per-thread heaps do not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "acctor-bench", about = "acctor benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Webhook ingest: open-loop rates against acctor, a no-op server and the store.
    Ingest {
        /// Offered rates, requests per second.
        #[arg(long, value_delimiter = ',', default_value = "2000,5000,10000,12000")]
        rates: Vec<u64>,
        /// Seconds per rate.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Linked accounts the webhooks are spread over.
        #[arg(long, default_value_t = 1000)]
        accounts: u32,
        /// Send webhooks for items that are not linked: measures verify + ingest +
        /// durability alone, without the syncs the events trigger.
        #[arg(long)]
        unlinked: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Initial sync of one item.
    InitialSync {
        /// Transactions in the item.
        #[arg(long, default_value_t = 50_000)]
        transactions: u32,
        /// Repetitions.
        #[arg(long, default_value_t = 3)]
        runs: u32,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Account openings in flight: memory per waiting operation, then completions per
    /// second as the bank decides them all (webhooks, in random order).
    Operations {
        /// Operations created and left waiting.
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Creates in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// (Run by `operations`.) Opens acctor on a store holding waiting operations, in
    /// this fresh process, and prints its RSS before and once it serves.
    #[command(hide = true)]
    OperationsWaiting {
        /// The data dir of the store.
        #[arg(long)]
        data_dir: std::path::PathBuf,
        /// The PostgreSQL database, when the store is PostgreSQL.
        #[arg(long)]
        postgres_url: Option<String>,
    },
    /// Memory per idle account and activation latency.
    Accounts {
        /// Linked accounts.
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        /// Activations sampled.
        #[arg(long, default_value_t = 20_000)]
        samples: u64,
    },
    /// The Stripe mirror: backfill, events per account, events across many accounts.
    Stripe {
        #[command(subcommand)]
        command: stripe::StripeCommand,
    },
}

/// Which store a benchmark runs on.
#[derive(clap::Args, Clone, Debug)]
struct StoreArgs {
    /// `sled` or `postgres`.
    #[arg(long, default_value = "sled", value_parser = ["sled", "postgres"])]
    store: String,
    /// The PostgreSQL database to use; without it, a throwaway server with fsync on
    /// (as a production server has it) is started in a temp dir.
    #[arg(long)]
    postgres_url: Option<String>,
}

/// The database a PostgreSQL run uses, and the server when the run started its own.
struct PgTarget {
    url: String,
    pgbench: std::path::PathBuf,
    _server: Option<acctor::testing::PgServer>,
}

impl StoreArgs {
    /// Starts what the store needs (a throwaway PostgreSQL server, with fsync on).
    fn prepare(&self) -> anyhow::Result<Option<PgTarget>> {
        if self.store != "postgres" {
            return Ok(None);
        }
        if let Some(url) = &self.postgres_url {
            return Ok(Some(PgTarget {
                url: url.clone(),
                pgbench: "pgbench".into(),
                _server: None,
            }));
        }
        let server = acctor::testing::PgServer::start_durable()?;
        let database = server.create_database()?;
        eprintln!("throwaway postgresql (fsync on) at port {}", server.port());
        Ok(Some(PgTarget {
            url: database.url,
            pgbench: server.bin_dir().join("pgbench"),
            _server: Some(server),
        }))
    }
}

fn use_store(settings: &mut Settings, target: Option<&PgTarget>) {
    if let Some(target) = target {
        settings.store.backend = acctor::config::StoreBackend::Postgres;
        settings.store.postgres.url = secrecy::SecretString::from(target.url.clone());
        settings.store.postgres.pool_size = 32;
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Logs to stderr (warnings by default, RUST_LOG to change), results to stdout.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let mut server = tokio::runtime::Builder::new_multi_thread();
    server.worker_threads(2).enable_all();
    // tokio's default (512) is what acctor's own binary runs with; a smaller pool shows
    // what the blocked store calls' threads cost.
    if let Ok(threads) = std::env::var("BENCH_MAX_BLOCKING_THREADS") {
        server.max_blocking_threads(
            threads
                .parse()
                .context("BENCH_MAX_BLOCKING_THREADS is a number")?,
        );
    }
    let server = server.build()?;
    match cli.command {
        Command::Ingest {
            rates,
            seconds,
            accounts,
            unlinked,
            store,
        } => {
            let target = store.prepare()?;
            server.block_on(ingest(rates, seconds, accounts, unlinked, target.as_ref()))
        }
        Command::InitialSync {
            transactions,
            runs,
            store,
        } => {
            let target = store.prepare()?;
            server.block_on(initial_sync(transactions, runs, target.as_ref()))
        }
        Command::Accounts { count, samples } => server.block_on(accounts(count, samples)),
        Command::OperationsWaiting {
            data_dir,
            postgres_url,
        } => server.block_on(operations_waiting(data_dir, postgres_url)),
        Command::Operations {
            count,
            concurrency,
            store,
        } => {
            let target = store.prepare()?;
            server.block_on(operations(count, concurrency, target.as_ref()))
        }
        Command::Stripe { command } => stripe::run(command, &server),
    }
}

fn quiet_settings(dir: &std::path::Path, sandbox_url: &str) -> Settings {
    let mut settings = Settings::defaults();
    settings.server.listen = "127.0.0.1:0".parse().expect("literal address");
    settings.store.data_dir = dir.to_path_buf();
    settings.plaid.base_url = sandbox_url.to_string();
    settings.bank.base_url = format!("{sandbox_url}/bank");
    settings.stripe.base_url = format!("{sandbox_url}/stripe");
    settings.sandbox.embedded = false;
    settings.sandbox.demo_items = 0;
    settings.secrets.key = Some(secrecy::SecretString::from(
        "bench:KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=".to_owned(),
    ));
    // The benchmarks measure acctor's own work. The client-side request budget (Plaid's
    // per-Item limit, 50 calls a minute by default) would make a 100-page first sync
    // take a minute by design, and it is not what is being measured.
    settings.plaid.sync_budget_per_minute = 0;
    if let Ok(ms) = std::env::var("BENCH_COMMIT_WINDOW_MS") {
        settings.store.group_commit_window =
            Duration::from_millis(ms.parse().expect("BENCH_COMMIT_WINDOW_MS is a number"));
    }
    if let Ok(bytes) = std::env::var("BENCH_CACHE_BYTES") {
        settings.store.cache_capacity_bytes = bytes.parse().expect("BENCH_CACHE_BYTES is a number");
    }
    settings
}

async fn start_sandbox() -> anyhow::Result<(Sandbox, acctor::sandbox::SandboxHandle)> {
    let sandbox = Sandbox::new(SandboxConfig {
        client_id: "acctor-demo-client".into(),
        secret: "acctor-demo-secret".into(),
        default_webhook_url: None,
        seed: 1,
        data_dir: None,
        bank: Default::default(),
    })?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let handle = sandbox.clone().serve(listener).await;
    Ok((sandbox, handle))
}

// ---------------------------------------------------------------- ingest

struct RateResult {
    offered: u64,
    completed: u64,
    errors: u64,
    elapsed: Duration,
    histogram: Histogram<u64>,
}

impl RateResult {
    fn row(&self, target: &str) -> String {
        let q = |p: f64| self.histogram.value_at_quantile(p) as f64 / 1000.0;
        format!(
            "| {target} | {} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            self.offered,
            self.completed as f64 / self.elapsed.as_secs_f64(),
            self.errors,
            q(0.5),
            q(0.99),
            q(0.999),
            self.histogram.max() as f64 / 1000.0
        )
    }
}

/// One prepared request: URL, `Plaid-Verification` JWT, body.
type Prepared = (String, Option<String>, Vec<u8>);

/// Connections the load generator uses (like wrk2's `-c`): a stalled server makes
/// requests queue behind them — and that wait is charged to their latency — instead of
/// making the generator open thousands of new connections.
const CONNECTIONS: usize = 256;

/// Sends `requests` open-loop at `rate`/s from a dedicated runtime over at most
/// [`CONNECTIONS`] connections. Request `i` is due at `start + i/rate`; its latency is
/// measured from that due time, not from when it was actually sent, so time spent
/// waiting for a free connection counts (coordinated-omission correction).
fn open_loop(requests: Arc<Vec<Prepared>>, rate: u64) -> RateResult {
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("client runtime");
    client_rt.block_on(async move {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(CONNECTIONS)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let histogram = Arc::new(Mutex::new(
            Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("histogram"),
        ));
        let errors = Arc::new(AtomicU64::new(0));
        let completed = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(0));
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let start = tokio::time::Instant::now();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..CONNECTIONS {
            let (requests, client, histogram, errors, completed, next) = (
                requests.clone(),
                client.clone(),
                histogram.clone(),
                errors.clone(),
                completed.clone(),
                next.clone(),
            );
            workers.spawn(async move {
                let mut local =
                    Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("histogram");
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some((url, jwt, body)) = requests.get(index) else {
                        break;
                    };
                    let due = start + interval.mul_f64(index as f64);
                    tokio::time::sleep_until(due).await;
                    let mut request = client.post(url).body(body.clone());
                    if let Some(jwt) = jwt {
                        request = request.header("Plaid-Verification", jwt);
                    }
                    let ok = matches!(request.send().await, Ok(r) if r.status() == StatusCode::OK);
                    if ok {
                        completed.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = local.record((due.elapsed().as_micros() as u64).max(1));
                }
                if let Ok(mut h) = histogram.lock() {
                    let _ = h.add(&local);
                }
            });
        }
        while workers.join_next().await.is_some() {}
        let elapsed = start.elapsed();
        let histogram = histogram.lock().map(|h| h.clone()).expect("histogram lock");
        RateResult {
            offered: rate,
            completed: completed.load(Ordering::Relaxed),
            errors: errors.load(Ordering::Relaxed),
            elapsed,
            histogram,
        }
    })
}

async fn ingest(
    rates: Vec<u64>,
    seconds: u64,
    accounts: u32,
    unlinked: bool,
    target: Option<&PgTarget>,
) -> anyhow::Result<()> {
    let (sandbox, sandbox_handle) = start_sandbox().await?;
    let dir = tempfile::tempdir()?;
    let mut settings = quiet_settings(dir.path(), &sandbox_handle.base_url());
    use_store(&mut settings, target);
    let app = App::build(settings).await?;
    let app_url = format!("http://{}", app.addr());
    sandbox.set_default_webhook_url(format!("{app_url}/webhooks/plaid"));
    let state = app.state().clone();
    let client = admin_client(&app)?;
    let (stop_app, stopped) = tokio::sync::oneshot::channel::<()>();
    let app_task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));

    eprintln!("linking {accounts} accounts");
    let mut items = Vec::new();
    for _ in 0..accounts {
        let item = sandbox.create_item(5, None);
        if unlinked {
            items.push(item.item_id);
            continue;
        }
        let response = client
            .post(format!("{app_url}/v1/accounts"))
            .json(&json!({"provider": "plaid", "item_id": item.item_id,
                "access_token": item.access_token, "owner_id": format!("o-{}", item.item_id)}))
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == 201,
            "link failed: {}",
            response.status()
        );
        items.push(item.item_id);
    }

    // The no-op server: the same axum/tokio stack, answering 200 at once.
    let noop = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let noop_url = format!("http://{}/webhooks/plaid", noop.local_addr()?);
    tokio::spawn(async move {
        let router = axum::Router::new().route(
            "/webhooks/plaid",
            axum::routing::post(|| async { StatusCode::OK }),
        );
        let _ = axum::serve(noop, router).await;
    });

    let mut nonce = 0u64;
    // Warm-up (discarded): connections, allocator arenas, sled's caches.
    {
        let rate = rates.first().copied().unwrap_or(1000);
        let now = chrono::Utc::now().timestamp();
        let mut warmup = Vec::new();
        for i in 0..(rate * 2) as usize {
            nonce += 1;
            let item = &items[i % items.len()];
            let body = serde_json::to_vec(&json!({
                "webhook_type": "TRANSACTIONS", "webhook_code": "SYNC_UPDATES_AVAILABLE",
                "item_id": item, "environment": "sandbox", "nonce": nonce,
            }))?;
            let jwt = sandbox.sign_webhook(&body, now);
            warmup.push((format!("{app_url}/webhooks/plaid"), Some(jwt), body));
        }
        let warmup = Arc::new(warmup);
        tokio::task::spawn_blocking(move || open_loop(warmup, rate)).await?;
    }
    println!("| target | offered/s | achieved/s | errors | p50 ms | p99 ms | p99.9 ms | max ms |");
    println!("|---|---|---|---|---|---|---|---|");
    for rate in rates {
        let count = (rate * seconds) as usize;
        eprintln!("signing {count} webhooks for {rate}/s");
        let mut requests = Vec::with_capacity(count);
        let now = chrono::Utc::now().timestamp();
        for i in 0..count {
            nonce += 1;
            let item = &items[i % items.len()];
            let body = serde_json::to_vec(&json!({
                "webhook_type": "TRANSACTIONS", "webhook_code": "SYNC_UPDATES_AVAILABLE",
                "item_id": item, "initial_update_complete": true,
                "historical_update_complete": true, "environment": "sandbox", "nonce": nonce,
            }))?;
            let jwt = sandbox.sign_webhook(&body, now);
            requests.push((format!("{app_url}/webhooks/plaid"), Some(jwt), body));
        }
        let requests = Arc::new(requests);
        let noop_requests = Arc::new(
            requests
                .iter()
                .map(|(_, jwt, body)| (noop_url.clone(), jwt.clone(), body.clone()))
                .collect::<Vec<_>>(),
        );
        let result = tokio::task::spawn_blocking(move || open_loop(noop_requests, rate)).await?;
        println!("{}", result.row("no-op 200"));
        let result = tokio::task::spawn_blocking(move || open_loop(requests, rate)).await?;
        println!("{}", result.row("acctor durable ingest"));
    }

    // The store's own ceiling: concurrent ingest + durable, no HTTP, no verification.
    for writers in [64usize, 256] {
        let store = state.ctx.store.blocking().clone();
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..writers {
            let store = store.clone();
            let done = done.clone();
            let item = items[w % items.len()].clone();
            tasks.spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    let mut key = [0u8; 32];
                    key[..8].copy_from_slice(&(w as u64).to_be_bytes());
                    key[8..16].copy_from_slice(&n.to_be_bytes());
                    key[16] = 0xbe;
                    let webhook = IncomingWebhook {
                        provider: ProviderKind::Plaid,
                        item_id: item.clone(),
                        kind: "TRANSACTIONS/SYNC_UPDATES_AVAILABLE".into(),
                        dedup_key: key,
                        body: json!({"item_id": item, "n": n}),
                        received_at: chrono::Utc::now(),
                    };
                    // On the blocking pool, as the app calls the store.
                    let ingested = {
                        let store = store.clone();
                        tokio::task::spawn_blocking(move || {
                            store.ingest(webhook, Duration::from_secs(900))
                        })
                        .await
                        .is_ok_and(|r| r.is_ok())
                    };
                    if ingested && store.durable().await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        let start = Instant::now();
        while tasks.join_next().await.is_some() {}
        println!(
            "| store ceiling ({writers} writers) | — | {:.0} | 0 | | | | |",
            done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
        );
    }
    if let Some(target) = target {
        pgbench_ceiling(target, seconds).await?;
    }
    let _ = stop_app.send(());
    let _ = app_task.await;
    sandbox_handle.shutdown().await?;
    Ok(())
}

/// PostgreSQL's own durable single-row insert ceiling on the same server: pgbench,
/// 16 clients, one INSERT per transaction.
async fn pgbench_ceiling(target: &PgTarget, seconds: u64) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&target.url).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS public.bench_ceiling (id bigserial PRIMARY KEY, v integer, at timestamptz DEFAULT now())")
        .execute(&mut conn)
        .await?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("insert.sql");
    std::fs::write(
        &script,
        "INSERT INTO public.bench_ceiling (v) VALUES (:client_id);\n",
    )?;
    // pgbench runs as whoever can read the script; the temp dir may be root's only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644))?;
    }
    let output = tokio::process::Command::new(&target.pgbench)
        .args([
            "-n",
            "-c",
            "16",
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-f",
        ])
        .arg(&script)
        .arg(&target.url)
        .output()
        .await
        .context("running pgbench")?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "pgbench failed: {}{}",
        text,
        String::from_utf8_lossy(&output.stderr)
    );
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("?");
    let latency = text
        .lines()
        .find(|l| l.starts_with("latency average"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap_or("?");
    println!(
        "| postgresql insert ceiling (pgbench, 16 clients) | — | {tps} | 0 | avg {latency} | | | |"
    );
    Ok(())
}

// ---------------------------------------------------------------- initial sync

/// A client for `app`'s admin API: every request carries its bearer token.
fn admin_client(app: &App) -> anyhow::Result<reqwest::Client> {
    let mut value = reqwest::header::HeaderValue::from_str(&format!(
        "Bearer {}",
        app.admin_token().expose_secret()
    ))?;
    value.set_sensitive(true);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}

async fn initial_sync(
    transactions: u32,
    runs: u32,
    target: Option<&PgTarget>,
) -> anyhow::Result<()> {
    let (sandbox, sandbox_handle) = start_sandbox().await?;
    let dir = tempfile::tempdir()?;
    let mut settings = quiet_settings(dir.path(), &sandbox_handle.base_url());
    use_store(&mut settings, target);
    let app = App::build(settings).await?;
    let app_url = format!("http://{}", app.addr());
    let state = app.state().clone();
    let client = admin_client(&app)?;
    let (stop_app, stopped) = tokio::sync::oneshot::channel::<()>();
    let app_task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    println!("| transactions | run | link → committed (ms) | rows stored |");
    println!("|---|---|---|---|");
    for run in 1..=runs {
        let item = sandbox.create_item(transactions, None);
        let start = Instant::now();
        let response = client
            .post(format!("{app_url}/v1/accounts"))
            .json(&json!({"provider": "plaid", "item_id": item.item_id,
                "access_token": item.access_token, "owner_id": format!("o-{run}")}))
            .send()
            .await?;
        anyhow::ensure!(response.status() == 201, "link failed");
        let view: serde_json::Value = response.json().await?;
        let id = AccountId(view["id"].as_str().context("id")?.to_string());
        loop {
            let read = id.clone();
            let account = state
                .ctx
                .store
                .run(move |s| s.get_account(&read))
                .await?
                .context("account")?;
            if account.sync_count >= 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = start.elapsed();
        let read = id.clone();
        let rows = state
            .ctx
            .store
            .run(move |s| s.count_transactions(&read))
            .await?;
        println!(
            "| {transactions} | {run} | {} | {rows} |",
            elapsed.as_millis()
        );
    }
    let _ = stop_app.send(());
    let _ = app_task.await;
    sandbox_handle.shutdown().await?;
    Ok(())
}

// ---------------------------------------------------------------- operations

/// Polls `probe` every 50 ms until it holds, for at most `within`.
async fn wait_until(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !probe()? {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn operations(
    count: u64,
    concurrency: usize,
    target: Option<&PgTarget>,
) -> anyhow::Result<()> {
    use acctor::domain::operations::OperationState;
    use acctor::sandbox::{ForcedOutcome, MarketUpdate, Outcome};
    use rand::seq::SliceRandom;

    let (sandbox, sandbox_handle) = start_sandbox().await?;
    let bank = sandbox.bank();
    // The bank sits on every opening until the benchmark decides it.
    bank.set_market(
        "NL",
        MarketUpdate {
            outcome: Some(Outcome::Never),
            ..MarketUpdate::default()
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = tempfile::tempdir()?;
    let mut settings = quiet_settings(dir.path(), &sandbox_handle.base_url());
    use_store(&mut settings, target);
    // Idle operation actors stop quickly, so "waiting" means passivated.
    settings.actors.passivate_after = Duration::from_secs(1);
    let cache = settings.store.cache_capacity_bytes;
    let app = App::build(settings.clone()).await?;
    let url = format!("http://{}", app.addr());
    bank.set_webhook_url(Some(format!("{url}/webhooks/bank")));
    let client = admin_client(&app)?;
    let state = app.state().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));

    // Create them all, `concurrency` at a time.
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, next) = (client.clone(), url.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return Ok::<_, anyhow::Error>(());
                }
                let response = client
                    .post(format!("{url}/v1/operations/account-openings"))
                    .json(&json!({
                        "customer_id": format!("bench-customer-{n}"),
                        "market": "NL",
                        "segment": "company",
                        "legal_name": format!("Bench {n} BV"),
                    }))
                    .send()
                    .await?;
                anyhow::ensure!(
                    response.status() == StatusCode::ACCEPTED,
                    "create {n}: {}",
                    response.status()
                );
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let create_secs = started.elapsed().as_secs_f64();
    // Every one submitted to the bank (tracking id recorded), every actor passivated.
    wait_until("every opening submitted", Duration::from_secs(600), || {
        Ok(bank.stats().openings >= count)
    })
    .await?;
    let operations = state.ctx.operations.clone();
    wait_until(
        "operation actors passivated",
        Duration::from_secs(120),
        || Ok(operations.stats().active == 0 && operations.stats().steps_running == 0),
    )
    .await?;
    let rss_waiting_same_process = rss_bytes();
    drop((state, operations));
    let _ = stop.send(());
    server.await??;

    // A fresh view: acctor started in a process of its own on the store holding the
    // waiting operations (their polls due in 30 minutes), measured once it serves and
    // restart recovery is done: what waiting costs, without this process's history.
    let (rss_before, rss_waiting) = measure_fresh(dir.path(), target)?;
    // The same on an empty store (same kind): the baseline the operations add to.
    let empty = tempfile::tempdir()?;
    let empty_target = match target {
        Some(_) => Some(fresh_database_of(
            target,
            &format!("bench_empty_{}", std::process::id()),
        )?),
        None => None,
    };
    let (_, rss_empty) = measure_fresh(empty.path(), empty_target.as_ref().or(None))?;
    let app = App::build(settings).await?;
    let url = format!("http://{}", app.addr());
    bank.set_webhook_url(Some(format!("{url}/webhooks/bank")));
    let state = app.state().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let store = state.ctx.store.blocking().clone();

    // The bank decides them all, in random order, as fast as it can send.
    let mut tracking: Vec<String> = bank.openings().into_iter().map(|o| o.tracking_id).collect();
    tracking.shuffle(&mut rand::thread_rng());
    let started = Instant::now();
    for tracking_id in &tracking {
        bank.force_outcome(tracking_id, ForcedOutcome::Complete)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    // Store reads off the runtime's threads (the PostgreSQL store blocks on its own).
    let deadline = Instant::now() + Duration::from_secs(1200);
    loop {
        let store = store.clone();
        let counts = tokio::task::spawn_blocking(move || store.count_operations()).await??;
        let completed = counts
            .iter()
            .find(|(s, _)| *s == OperationState::Completed)
            .map_or(0, |(_, n)| *n);
        if completed >= count {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out: {completed} of {count} completed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let complete_secs = started.elapsed().as_secs_f64();
    let cards = bank.stats().cards_issued;
    let store_name = if target.is_some() { "postgres" } else { "sled" };
    println!("| store | operations | creates/s | RSS of the creating process, all waiting | fresh process: before acctor | fresh: serving, empty store | fresh: serving, all waiting | store cache | bytes/waiting op over the empty store | completions/s | cards issued |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {store_name} | {count} | {:.0} | {} MiB | {} MiB | {} MiB | {} MiB | {} MiB | {:.0} | {:.0} | {cards} |",
        count as f64 / create_secs,
        rss_waiting_same_process >> 20,
        rss_before >> 20,
        rss_empty >> 20,
        rss_waiting >> 20,
        cache >> 20,
        rss_waiting.saturating_sub(rss_empty) as f64 / count as f64,
        count as f64 / complete_secs,
    );
    anyhow::ensure!(cards == count, "{cards} cards for {count} openings");
    drop(state);
    let _ = stop.send(());
    server.await??;
    sandbox_handle.shutdown().await?;
    Ok(())
}

/// Runs `operations-waiting` on `dir` in a child process: (RSS before acctor, RSS
/// serving with every operation waiting).
fn measure_fresh(dir: &std::path::Path, target: Option<&PgTarget>) -> anyhow::Result<(u64, u64)> {
    let mut child = std::process::Command::new(std::env::current_exe()?);
    child.arg("operations-waiting").arg("--data-dir").arg(dir);
    if let Some(target) = target {
        child.arg("--postgres-url").arg(&target.url);
    }
    let output = child.stderr(std::process::Stdio::inherit()).output()?;
    anyhow::ensure!(output.status.success(), "operations-waiting failed");
    let measured = String::from_utf8_lossy(&output.stdout);
    let mut numbers = measured
        .lines()
        .filter_map(|l| l.strip_prefix("rss "))
        .flat_map(|l| l.split_whitespace().map(|n| n.parse::<u64>().unwrap_or(0)));
    Ok((numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)))
}

/// Another (empty) database, `name`, on `target`'s server.
fn fresh_database_of(target: Option<&PgTarget>, name: &str) -> anyhow::Result<PgTarget> {
    let target = target.context("no PostgreSQL target")?;
    let (base, _) = target
        .url
        .rsplit_once('/')
        .context("a PostgreSQL URL ends in its database")?;
    let admin = format!("{base}/postgres");
    std::process::Command::new(target.pgbench.with_file_name("psql"))
        .args([admin.as_str(), "-qc", &format!("CREATE DATABASE {name}")])
        .status()?;
    Ok(PgTarget {
        url: format!("{base}/{name}"),
        pgbench: target.pgbench.clone(),
        _server: None,
    })
}

/// The fresh-process half of `operations`: acctor on the store in `data_dir`, every
/// operation waiting; prints `rss <before> <serving>` in bytes.
async fn operations_waiting(
    data_dir: std::path::PathBuf,
    postgres_url: Option<String>,
) -> anyhow::Result<()> {
    // The bank is never called: nothing is due for 30 minutes.
    let mut settings = quiet_settings(&data_dir, "http://127.0.0.1:9");
    settings.actors.passivate_after = Duration::from_secs(1);
    if let Some(url) = postgres_url {
        settings.store.backend = acctor::config::StoreBackend::Postgres;
        settings.store.postgres.url = secrecy::SecretString::from(url);
    }
    let before = rss_bytes();
    let app = App::build(settings).await?;
    let url = format!("http://{}", app.addr());
    let state = app.state().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client
        .get(format!("{url}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        anyhow::ensure!(Instant::now() < deadline, "acctor never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Restart recovery drives what is due (nothing) and actors passivate.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let operations = state.ctx.operations.clone();
    wait_until(
        "operation actors passivated",
        Duration::from_secs(120),
        || Ok(operations.stats().active == 0 && operations.stats().steps_running == 0),
    )
    .await?;
    let serving = rss_bytes();
    println!("rss {before} {serving}");
    drop((state, operations));
    let _ = stop.send(());
    server.await??;
    Ok(())
}

// ---------------------------------------------------------------- accounts

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

async fn accounts(count: u64, samples: u64) -> anyhow::Result<()> {
    let (_sandbox, sandbox_handle) = start_sandbox().await?;
    let dir = tempfile::tempdir()?;
    let settings = quiet_settings(dir.path(), &sandbox_handle.base_url());
    let cache = settings.store.cache_capacity_bytes;
    let rss_start = rss_bytes();
    // Link straight into the store (the HTTP path is measured elsewhere); each account
    // already has a cursor, so activation does not start a sync.
    {
        // The keys the app will open this store with.
        let (keyring, _) = acctor::app::resolve_keyring(&settings)?;
        let store = SledStore::open_with_keyring(
            SledStoreConfig {
                data_dir: dir.path().to_path_buf(),
                cache_capacity_bytes: cache,
                group_commit_window: std::time::Duration::from_millis(2),
            },
            keyring,
        )?;
        let started = Instant::now();
        for n in 0..count {
            let account = Account {
                cursor: Some("bench".into()),
                cursor_updated_at: Some(chrono::Utc::now()),
                ..Account::new_linked(
                    ProviderKind::Plaid,
                    format!("item-{n}"),
                    AccessToken::new(format!("access-sandbox-{n}")),
                    format!("owner-{n}"),
                    vec![],
                    chrono::Utc::now(),
                )
            };
            store.link_account(&account)?;
            if n % 100_000 == 0 {
                eprintln!("linked {n} in {:?}", started.elapsed());
            }
        }
        store.durable().await?;
        eprintln!("linked {count} in {:?}", started.elapsed());
    }
    // A fresh process view: open the app on the populated store, actors all passivated.
    let rss_before_app = rss_bytes();
    let app = App::build(quiet_settings(dir.path(), &sandbox_handle.base_url())).await?;
    let state = app.state().clone();
    let ids: Vec<AccountId> = {
        let mut ids = Vec::new();
        let mut after: Option<AccountId> = None;
        while (ids.len() as u64) < samples {
            let page = state
                .ctx
                .store
                .blocking()
                .list_accounts(after.as_ref(), 1000)?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            ids.extend(page.into_iter().map(|a| a.id));
        }
        ids.truncate(samples as usize);
        ids
    };
    let rss_idle = rss_bytes();
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)?;
    for id in &ids {
        let start = Instant::now();
        state.ctx.registry.ping(id).await?;
        histogram.record(start.elapsed().as_micros().max(1) as u64)?;
        state.ctx.registry.stop(id).await;
    }
    println!("| accounts | RSS at start | RSS with store open, all passivated | store cache | bytes/idle account beyond cache | activation p50 µs | p99 µs | p99.9 µs |");
    println!("|---|---|---|---|---|---|---|---|");
    let beyond = rss_idle.saturating_sub(rss_start).saturating_sub(cache) as f64 / count as f64;
    println!(
        "| {count} | {} MiB | {} MiB | {} MiB | {:.1} | {} | {} | {} |",
        rss_start >> 20,
        rss_idle >> 20,
        cache >> 20,
        beyond,
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999)
    );
    eprintln!("rss before app {} MiB", rss_before_app >> 20);
    drop(app);
    sandbox_handle.shutdown().await?;
    Ok(())
}
