//! `acctor-bench stripe …`: the Stripe mirror of issue 11, measured against the
//! in-process sandbox's Stripe and a real App (sled, or `--store postgres`), with the
//! client's request budget off (`--test-rate 0`) unless asked for, so what is measured
//! is acctor's own work and not the budget it would keep towards Stripe.
//!
//! - `backfill`: one account holding N objects (one type, or spread over several), from
//!   the link to every type visible; objects/s, pages/s, RSS. Then the same pages are
//!   listed again with acctor's own client and nothing else (the *fetch floor*), which
//!   splits the backfill's time into listing and the rest (the commits): the backfill
//!   is one page at a time, list then commit, so the two add up.
//! - `events`: one linked, backfilled account; the sandbox makes M changes with their
//!   deliveries held, then sends them; the time until acctor's guard counters
//!   (`events_applied + events_stale`, which every event of a mirrored object moves by
//!   exactly one) account for every event the sandbox made.
//! - `fleet`: the same across many linked accounts with small backfills, flushed in
//!   parallel; events/s and memory.
//!
//! Completion is read from the store's sync state (one record per account, what
//! `GET /v1/accounts/{id}/stripe` reads too), polled every few milliseconds. Polling the
//! report itself would load what is measured: it counts every type's live objects by
//! scanning them, so at 100,000 objects each call decodes the whole copy. `backfill
//! --poll http` polls it instead, to show that cost; every run reads the report once at
//! the end to check the counts.

use std::time::Duration;

use anyhow::Context;

use acctor::domain::stripe::ObjectType;

use super::{fresh_database_of, PgTarget, StoreArgs};

mod backfill;
mod events;
mod harness;

/// How often completion is polled (a read of one small record per account).
const POLL: Duration = Duration::from_millis(5);
/// How long any one phase may take before the run fails.
const PATIENCE: Duration = Duration::from_secs(900);

/// The Stripe benchmarks.
#[derive(clap::Subcommand)]
pub enum StripeCommand {
    /// One account's backfill: link → every type visible.
    Backfill {
        /// Objects in the account.
        #[arg(long, default_value_t = 100_000)]
        objects: usize,
        /// The types they are spread over (comma-separated list names, or `all`).
        #[arg(long, default_value = "customers")]
        types: String,
        /// Poll the store's sync state (`store`) or `GET /v1/accounts/{id}/stripe`.
        #[arg(long, default_value = "store", value_parser = ["store", "http"])]
        poll: String,
        /// Repetitions, each with a fresh sandbox, app and store, in this process (so
        /// memory figures after the first include what earlier runs left).
        #[arg(long, default_value_t = 1)]
        runs: u32,
        #[command(flatten)]
        common: Common,
    },
    /// One account's events: held deliveries flushed, time until all are applied.
    Events {
        /// Objects the account is backfilled with first (spread over the ten types).
        #[arg(long, default_value_t = 10_000)]
        objects: usize,
        /// Changes the sandbox makes (each one event).
        #[arg(long, default_value_t = 10_000)]
        changes: usize,
        /// `held`: held, then flushed by the sandbox one delivery after the other;
        /// `queued`: sent as they happen by the sandbox's delivery workers (4 at once).
        #[arg(long, default_value = "held", value_parser = ["held", "queued"])]
        delivery: String,
        /// Send the webhooks through a pass-through that times acctor's answers.
        #[arg(long)]
        latency: bool,
        /// Repetitions, each with a fresh sandbox, app and store, in this process (so
        /// memory figures after the first include what earlier runs left).
        #[arg(long, default_value_t = 1)]
        runs: u32,
        #[command(flatten)]
        common: Common,
    },
    /// Many accounts: small backfills, then events spread over them.
    Fleet {
        /// Linked accounts.
        #[arg(long, default_value_t = 1000)]
        accounts: usize,
        /// Objects of each of the ten types per account.
        #[arg(long, default_value_t = 2)]
        objects_per_type: usize,
        /// Changes the sandbox makes, spread evenly over the accounts.
        #[arg(long, default_value_t = 20_000)]
        changes: usize,
        /// Links in flight at once.
        #[arg(long, default_value_t = 16)]
        link_concurrency: usize,
        /// Accounts whose held deliveries are flushed at once (each flush sends one
        /// delivery after the other).
        #[arg(long, default_value_t = 64)]
        flush_concurrency: usize,
        /// Send the webhooks through a pass-through that times acctor's answers.
        #[arg(long)]
        latency: bool,
        /// Repetitions, each with a fresh sandbox, app and store, in this process (so
        /// memory figures after the first include what earlier runs left).
        #[arg(long, default_value_t = 1)]
        runs: u32,
        #[command(flatten)]
        common: Common,
    },
}

/// What every Stripe benchmark takes.
#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// `[stripe] test_rate`: requests per second per test-mode account; 0 unlimited.
    #[arg(long, default_value_t = 0)]
    test_rate: u32,
    /// `[stripe] backfill_parallel`: windows of one type listed at once.
    #[arg(long, default_value_t = 4)]
    backfill_parallel: u32,
    /// Added by the sandbox to every API call of the account (as a distant Stripe
    /// would take), in milliseconds.
    #[arg(long, default_value_t = 0)]
    api_latency_ms: u64,
    #[command(flatten)]
    store: StoreArgs,
}

/// Runs one Stripe benchmark on `runtime`.
pub fn run(command: StripeCommand, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    match command {
        StripeCommand::Backfill {
            objects,
            types,
            poll,
            runs,
            common,
        } => {
            let types = parse_types(&types)?;
            let target = common.store.prepare()?;
            backfill::print_header();
            for run in 1..=runs {
                let database = run_database(target.as_ref(), run)?;
                let options = RunOptions::new(&common, database, false);
                runtime.block_on(backfill::run(options, objects, &types, &poll, run))?;
            }
            Ok(())
        }
        StripeCommand::Events {
            objects,
            changes,
            delivery,
            latency,
            runs,
            common,
        } => {
            let target = common.store.prepare()?;
            events::print_header();
            for run in 1..=runs {
                let database = run_database(target.as_ref(), run)?;
                let options = RunOptions::new(&common, database, latency);
                runtime.block_on(events::run(options, objects, changes, &delivery, run))?;
            }
            Ok(())
        }
        StripeCommand::Fleet {
            accounts,
            objects_per_type,
            changes,
            link_concurrency,
            flush_concurrency,
            latency,
            runs,
            common,
        } => {
            let target = common.store.prepare()?;
            events::print_fleet_header();
            for run in 1..=runs {
                let database = run_database(target.as_ref(), run)?;
                let options = RunOptions::new(&common, database, latency);
                let shape = events::FleetShape {
                    accounts,
                    objects_per_type,
                    changes,
                    link_concurrency,
                    flush_concurrency,
                };
                runtime.block_on(events::fleet(options, shape, run))?;
            }
            Ok(())
        }
    }
}

fn parse_types(names: &str) -> anyhow::Result<Vec<ObjectType>> {
    if names == "all" {
        return Ok(ObjectType::ALL.to_vec());
    }
    names
        .split(',')
        .map(|name| {
            ObjectType::parse(name.trim())
                .with_context(|| format!("{name:?} is not a Stripe type acctor mirrors"))
        })
        .collect()
}

/// A fresh PostgreSQL database for each run (the runs must not see each other's
/// accounts: a start syncs every linked account).
fn run_database(target: Option<&PgTarget>, run: u32) -> anyhow::Result<Option<PgTarget>> {
    match target {
        None => Ok(None),
        Some(_) => {
            let name = format!("bench_stripe_{}_{run}", std::process::id());
            Ok(Some(fresh_database_of(target, &name)?))
        }
    }
}

/// How one run's app is set up.
struct RunOptions {
    /// `[stripe] test_rate`.
    test_rate: u32,
    /// `[stripe] backfill_parallel`.
    backfill_parallel: u32,
    /// The sandbox's latency per API call.
    api_latency_ms: u64,
    /// The run's own PostgreSQL database, when the store is PostgreSQL.
    database: Option<PgTarget>,
    /// Webhooks through the timing pass-through.
    latency: bool,
}

impl RunOptions {
    fn new(common: &Common, database: Option<PgTarget>, latency: bool) -> RunOptions {
        RunOptions {
            test_rate: common.test_rate,
            backfill_parallel: common.backfill_parallel,
            api_latency_ms: common.api_latency_ms,
            database,
            latency,
        }
    }

    fn store_name(&self) -> &'static str {
        if self.database.is_some() {
            "postgres"
        } else {
            "sled"
        }
    }
}
