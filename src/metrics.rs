//! Prometheus metrics of one acctor instance, rendered by `GET /metrics`.
//!
//! Every [`Metrics`] owns its own `prometheus_client` registry: there is no global
//! state, so the many apps a test binary runs side by side never see each other's
//! counts. The actors' context (`actors::ActorContext`) creates it; the actors count
//! into it from there, and the services and handlers read the same set from
//! `service::Context::metrics`.
//!
//! Two kinds of values live here:
//! - event counters and histograms, moved by the code paths they describe (webhook
//!   outcomes, sync outcomes and durations, rows applied, provider errors, restarts,
//!   rate-limit waits);
//! - levels read at scrape time from where they are already counted ([`ScrapeValues`]:
//!   the store's inbox-depth counter, the retry index, the registry's counters), so a
//!   scrape never disagrees with the store.
//!
//! Incidents and the client-side rate-limit budget are being built elsewhere; their
//! families exist here and are fed through [`Metrics::set_incidents_open`] and
//! [`Metrics::rate_limit_wait`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry as PromRegistry;

/// The content type of [`Metrics::render`]'s output (OpenMetrics text, which
/// Prometheus scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of `acctor_webhooks_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `plaid`, or `unknown` for a provider acctor does not know.
    pub provider: String,
    /// `accepted`, `duplicate` or `rejected`.
    pub outcome: String,
    /// Why it was rejected (`unauthorized`, `malformed`, `too_large`, `backpressure`,
    /// `unavailable`, `unknown_provider`, `error`); empty unless rejected.
    pub reason: String,
}

/// Labels of the Stripe push counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabels {
    /// `pushed`, `conflict`, `failed` or `retried`.
    pub outcome: String,
}

/// Labels of the per-provider sync families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    /// The account's provider.
    pub provider: String,
    /// `committed`, `failed` or `gave_up`.
    pub outcome: String,
}

/// Labels of `acctor_sync_rows_applied_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RowLabels {
    /// The account's provider.
    pub provider: String,
    /// `added`, `modified` or `removed`.
    pub kind: String,
}

/// Labels of `acctor_provider_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderErrorLabels {
    /// The provider.
    pub provider: String,
    /// The provider's error code (e.g. `RATE_LIMIT_EXCEEDED`) or a transport code.
    pub code: String,
}

/// Labels of the rate-limit families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    /// The provider.
    pub provider: String,
    /// `provider_429` (the provider refused; the retry waits out its window) or
    /// `client_budget` (acctor's own budget held a request back).
    pub source: String,
}

/// Labels of `acctor_incidents_open`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IncidentLabels {
    /// The incident kind.
    pub kind: String,
}

/// Labels of `acctor_operation_calls_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationCallLabels {
    /// `create`, `legacy`, `poll` or `card`.
    pub call: String,
}

/// Labels of `acctor_operations`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationStateLabels {
    /// The operation state.
    pub state: String,
}

/// Labels of the Stripe mirror's counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StripeLabels {
    /// What happened (`applied`, `stale`, `refetched`, `caught_up`, `repaired`, `removed`).
    pub outcome: String,
    /// The object type, where there is one (empty otherwise).
    pub object_type: String,
}

/// Levels read at scrape time from the store and the registry of actors.
#[derive(Clone, Debug, Default)]
pub struct ScrapeValues {
    /// Pending inbox entries (all accounts, plus events kept for unlinked items).
    pub inbox_depth: u64,
    /// Retry records in the store (failed syncs waiting for their retry).
    pub retry_backlog: u64,
    /// Of those, the ones already due.
    pub retries_due: u64,
    /// Live account actors.
    pub actors_active: u64,
    /// Activations since start.
    pub activations: u64,
    /// Passivations since start.
    pub passivations: u64,
    /// Open incidents by kind (every kind, zeros included).
    pub incidents_open: Vec<(&'static str, u64)>,
    /// Operations by state (every state, zeros included).
    pub operations: Vec<(&'static str, u64)>,
    /// Live operation actors.
    pub operation_actors_active: u64,
}

/// Counters whose source of truth is elsewhere (the registry's atomics), copied in at
/// scrape time and encoded as constant counters.
#[derive(Debug, Default)]
struct ScrapedCounters {
    activations: AtomicU64,
    passivations: AtomicU64,
}

impl Collector for ScrapedCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, value) in [
            (
                "acctor_actor_activations",
                "Account actors activated since start",
                &self.activations,
            ),
            (
                "acctor_actor_passivations",
                "Account actors passivated (or stopped) since start",
                &self.passivations,
            ),
        ] {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

/// The metric families of one acctor instance.
pub struct Metrics {
    registry: PromRegistry,
    webhooks: Family<WebhookLabels, Counter>,
    syncs: Family<SyncLabels, Counter>,
    sync_duration: Family<SyncLabels, Histogram, fn() -> Histogram>,
    rows_applied: Family<RowLabels, Counter>,
    provider_errors: Family<ProviderErrorLabels, Counter>,
    rate_limit_waits: Family<RateLimitLabels, Counter>,
    rate_limit_wait_seconds: Family<RateLimitLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    restarts: Counter,
    quarantines: Counter,
    incidents_open: Family<IncidentLabels, Gauge>,
    inbox_depth: Gauge,
    retry_backlog: Gauge,
    retries_due: Gauge,
    actors_active: Gauge,
    operations: Family<OperationStateLabels, Gauge>,
    operation_actors_active: Gauge,
    operation_calls: Family<OperationCallLabels, Counter>,
    operation_escalations: Counter,
    operation_completion: Histogram,
    stripe: Family<StripeLabels, Counter>,
    stripe_push: Family<PushLabels, Counter>,
    scraped: Arc<ScrapedCounters>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of families in a registry of its own.
    pub fn new() -> Metrics {
        let mut registry = PromRegistry::default();
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "acctor_webhooks",
            "Webhooks received, by provider and outcome (rejected ones by reason)",
            webhooks.clone(),
        );
        let syncs = Family::<SyncLabels, Counter>::default();
        registry.register(
            "acctor_syncs",
            "Syncs finished, by provider and outcome (committed, failed, gave_up)",
            syncs.clone(),
        );
        let sync_duration =
            Family::<SyncLabels, Histogram>::new_with_constructor(sync_histogram as fn() -> _);
        registry.register(
            "acctor_sync_duration_seconds",
            "Wall time of one sync, from its start to its commit or failure",
            sync_duration.clone(),
        );
        let rows_applied = Family::<RowLabels, Counter>::default();
        registry.register(
            "acctor_sync_rows_applied",
            "Rows applied by committed syncs, by kind",
            rows_applied.clone(),
        );
        let provider_errors = Family::<ProviderErrorLabels, Counter>::default();
        registry.register(
            "acctor_provider_errors",
            "Failed syncs caused by the provider, by error code",
            provider_errors.clone(),
        );
        let rate_limit_waits = Family::<RateLimitLabels, Counter>::default();
        registry.register(
            "acctor_rate_limit_waits",
            "Times a provider request waited for a rate limit, by source",
            rate_limit_waits.clone(),
        );
        let rate_limit_wait_seconds = Family::<RateLimitLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "acctor_rate_limit_wait_seconds",
            "Time spent waiting for rate limits, by source",
            rate_limit_wait_seconds.clone(),
        );
        let restarts = Counter::default();
        registry.register(
            "acctor_actor_restarts",
            "Account actors restarted by the supervisor after a failure",
            restarts.clone(),
        );
        let quarantines = Counter::default();
        registry.register(
            "acctor_actor_quarantines",
            "Accounts quarantined by the supervisor after too many failures",
            quarantines.clone(),
        );
        let incidents_open = Family::<IncidentLabels, Gauge>::default();
        registry.register(
            "acctor_incidents_open",
            "Open incidents, by kind",
            incidents_open.clone(),
        );
        let gauge = |registry: &mut PromRegistry, name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let inbox_depth = gauge(
            &mut registry,
            "acctor_inbox_depth",
            "Acknowledged webhooks not yet consumed by a committed sync",
        );
        let retry_backlog = gauge(
            &mut registry,
            "acctor_retry_backlog",
            "Failed syncs waiting for their retry (retry records in the store)",
        );
        let retries_due = gauge(
            &mut registry,
            "acctor_retries_due",
            "Retry records already due (the sweeper re-drives them on its next tick)",
        );
        let actors_active = gauge(
            &mut registry,
            "acctor_actors_active",
            "Live account actors (the rest are passivated)",
        );
        let operations = Family::<OperationStateLabels, Gauge>::default();
        registry.register(
            "acctor_operations",
            "Account-opening operations, by state",
            operations.clone(),
        );
        let operation_actors_active = gauge(
            &mut registry,
            "acctor_operation_actors_active",
            "Live operation actors (the rest are passivated)",
        );
        let operation_calls = Family::<OperationCallLabels, Counter>::default();
        registry.register(
            "acctor_operation_calls",
            "Calls to the bank made by operations, by call (create, legacy, poll, card)",
            operation_calls.clone(),
        );
        let operation_escalations = Counter::default();
        registry.register(
            "acctor_operation_escalations",
            "Operations escalated for want of a bank decision",
            operation_escalations.clone(),
        );
        // 1 s to ~3 days: a sandbox opening up to one the bank sat on.
        let operation_completion = Histogram::new(exponential_buckets(1.0, 2.0, 19));
        registry.register(
            "acctor_operation_time_to_completion_seconds",
            "From an operation's creation to its completion (account open, card issued)",
            operation_completion.clone(),
        );
        let stripe = Family::<StripeLabels, Counter>::default();
        registry.register(
            "acctor_stripe_mirror",
            "Stripe mirror: events applied or stale (older, repeats), objects re-fetched, \
             catch-ups from the Events API, and drift repairs and removals by type",
            stripe.clone(),
        );
        let stripe_push = Family::<PushLabels, Counter>::default();
        registry.register(
            "acctor_stripe_push",
            "Local changes pushed to Stripe, by outcome: pushed, conflict (held for a \
             human), failed (refused by Stripe), retried (Stripe unreachable or rate \
             limited past the call's tries; pushed again on the account's retry)",
            stripe_push.clone(),
        );
        let scraped = Arc::new(ScrapedCounters::default());
        registry.register_collector(Box::new(scraped.clone()));
        Metrics {
            registry,
            webhooks,
            syncs,
            sync_duration,
            rows_applied,
            provider_errors,
            rate_limit_waits,
            rate_limit_wait_seconds,
            restarts,
            quarantines,
            incidents_open,
            inbox_depth,
            retry_backlog,
            retries_due,
            actors_active,
            operations,
            operation_actors_active,
            operation_calls,
            operation_escalations,
            operation_completion,
            stripe,
            stripe_push,
            scraped,
        }
    }

    /// Counts `n` of a Stripe mirror outcome (`object_type` empty when not per type).
    pub fn stripe_mirror(&self, outcome: &str, object_type: &str, n: u64) {
        if n > 0 {
            self.stripe
                .get_or_create(&StripeLabels {
                    outcome: outcome.to_string(),
                    object_type: object_type.to_string(),
                })
                .inc_by(n);
        }
    }

    /// Counts a push outcome.
    pub fn stripe_push(&self, outcome: &str) {
        self.stripe_push
            .get_or_create(&PushLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Counts a drift check's repairs or removals of one type.
    pub fn stripe_drift(&self, object_type: &str, outcome: &str, n: u64) {
        self.stripe_mirror(outcome, object_type, n);
    }

    /// Counts the bank calls one operation step made.
    pub fn operation_calls(&self, creates: u32, legacy: u32, polls: u32, cards: u32) {
        for (call, n) in [
            ("create", creates),
            ("legacy", legacy),
            ("poll", polls),
            ("card", cards),
        ] {
            if n > 0 {
                self.operation_calls
                    .get_or_create(&OperationCallLabels {
                        call: call.to_string(),
                    })
                    .inc_by(u64::from(n));
            }
        }
    }

    /// Counts one escalation.
    pub fn operation_escalated(&self) {
        self.operation_escalations.inc();
    }

    /// Records a completed operation's time from creation to completion.
    pub fn operation_completed(&self, took: Duration) {
        self.operation_completion.observe(took.as_secs_f64());
    }

    /// Counts one webhook: `outcome` is `accepted`, `duplicate` or `rejected`, with a
    /// `reason` for rejected ones (empty otherwise).
    pub fn webhook(&self, provider: &str, outcome: &str, reason: &str) {
        self.webhooks
            .get_or_create(&WebhookLabels {
                provider: provider.to_string(),
                outcome: outcome.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts a committed sync: its duration and the rows it applied.
    pub fn sync_committed(
        &self,
        provider: &str,
        duration: Duration,
        added: u64,
        modified: u64,
        removed: u64,
    ) {
        let labels = SyncLabels {
            provider: provider.to_string(),
            outcome: "committed".to_string(),
        };
        self.syncs.get_or_create(&labels).inc();
        self.sync_duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
        for (kind, n) in [
            ("added", added),
            ("modified", modified),
            ("removed", removed),
        ] {
            self.rows_applied
                .get_or_create(&RowLabels {
                    provider: provider.to_string(),
                    kind: kind.to_string(),
                })
                .inc_by(n);
        }
    }

    /// Counts a failed sync (`gave_up`: it was the last attempt), and the provider's
    /// error code when the provider caused it.
    pub fn sync_failed(
        &self,
        provider: &str,
        duration: Duration,
        provider_code: Option<&str>,
        gave_up: bool,
    ) {
        let labels = SyncLabels {
            provider: provider.to_string(),
            outcome: if gave_up { "gave_up" } else { "failed" }.to_string(),
        };
        self.syncs.get_or_create(&labels).inc();
        self.sync_duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
        if let Some(code) = provider_code {
            self.provider_errors
                .get_or_create(&ProviderErrorLabels {
                    provider: provider.to_string(),
                    code: code.to_string(),
                })
                .inc();
        }
    }

    /// Hook for rate limiting: a request to `provider` waited `waited` because of
    /// `source` (`provider_429` or `client_budget`; the client-side budget calls this
    /// each time it holds a request back).
    pub fn rate_limit_wait(&self, provider: &str, source: &str, waited: Duration) {
        let labels = RateLimitLabels {
            provider: provider.to_string(),
            source: source.to_string(),
        };
        self.rate_limit_waits.get_or_create(&labels).inc();
        self.rate_limit_wait_seconds
            .get_or_create(&labels)
            .inc_by(waited.as_secs_f64());
    }

    /// Counts a restart scheduled by the supervisor.
    pub fn actor_restarted(&self) {
        self.restarts.inc();
    }

    /// Counts a quarantine decided by the supervisor.
    pub fn actor_quarantined(&self) {
        self.quarantines.inc();
    }

    /// Hook for incidents: the number of open incidents of `kind` (set after every
    /// open and resolve, and once at start-up from the store).
    pub fn set_incidents_open(&self, kind: &str, open: u64) {
        self.incidents_open
            .get_or_create(&IncidentLabels {
                kind: kind.to_string(),
            })
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// Renders every family in the text exposition format, after copying in the levels
    /// read at scrape time.
    pub fn render(&self, scrape: ScrapeValues) -> Result<String, std::fmt::Error> {
        let level = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.inbox_depth.set(level(scrape.inbox_depth));
        self.retry_backlog.set(level(scrape.retry_backlog));
        self.retries_due.set(level(scrape.retries_due));
        self.actors_active.set(level(scrape.actors_active));
        for (kind, open) in &scrape.incidents_open {
            self.set_incidents_open(kind, *open);
        }
        for (state, count) in &scrape.operations {
            self.operations
                .get_or_create(&OperationStateLabels {
                    state: state.to_string(),
                })
                .set(level(*count));
        }
        self.operation_actors_active
            .set(level(scrape.operation_actors_active));
        self.scraped
            .activations
            .store(scrape.activations, Ordering::Relaxed);
        self.scraped
            .passivations
            .store(scrape.passivations, Ordering::Relaxed);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

fn sync_histogram() -> Histogram {
    // 5 ms to ~82 s: a one-page delta sync up to a 50,000-row first sync.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_counts_what_was_recorded_and_the_scrape_levels() {
        let metrics = Metrics::new();
        metrics.webhook("plaid", "accepted", "");
        metrics.webhook("plaid", "accepted", "");
        metrics.webhook("plaid", "rejected", "unauthorized");
        metrics.sync_committed("plaid", Duration::from_millis(30), 5, 2, 1);
        metrics.sync_failed(
            "plaid",
            Duration::from_millis(3),
            Some("INTERNAL_SERVER_ERROR"),
            false,
        );
        metrics.set_incidents_open("needs_reauth", 2);
        let text = metrics
            .render(ScrapeValues {
                inbox_depth: 7,
                activations: 3,
                ..ScrapeValues::default()
            })
            .expect("render");
        for line in [
            r#"acctor_webhooks_total{provider="plaid",outcome="accepted",reason=""} 2"#,
            r#"acctor_webhooks_total{provider="plaid",outcome="rejected",reason="unauthorized"} 1"#,
            r#"acctor_sync_rows_applied_total{provider="plaid",kind="added"} 5"#,
            r#"acctor_provider_errors_total{provider="plaid",code="INTERNAL_SERVER_ERROR"} 1"#,
            r#"acctor_incidents_open{kind="needs_reauth"} 2"#,
            "acctor_inbox_depth 7",
            "acctor_actor_activations_total 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn two_instances_do_not_share_counts() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.actor_restarted();
        let text = b.render(ScrapeValues::default()).expect("render");
        assert!(
            text.lines().any(|l| l == "acctor_actor_restarts_total 0"),
            "{text}"
        );
    }
}
