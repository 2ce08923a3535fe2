//! Configuration: typed [`Settings`] built from `config/default.toml` (compiled in), an
//! optional file, then `ACCTOR__SECTION__KEY` environment variables, then command-line
//! flags. Validated once at start; every later use can trust the values.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The compiled-in defaults.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// All settings.
#[derive(Clone, Debug, Deserialize)]
pub struct Settings {
    /// HTTP server.
    pub server: ServerSettings,
    /// Store.
    pub store: StoreSettings,
    /// Plaid client.
    pub plaid: PlaidSettings,
    /// `[bank]`.
    pub bank: BankSettings,
    /// `[operations]`.
    pub operations: OperationSettings,
    /// `[stripe]`.
    pub stripe: StripeSettings,
    /// Account actors.
    pub actors: ActorSettings,
    /// Simulated providers.
    pub sandbox: SandboxSettings,
    /// The sweeper (due retries, stale inbox entries, polling fallback).
    pub sweeper: SweeperSettings,
    /// Outbound alert webhook on incidents (off unless a URL is set).
    pub alerts: AlertSettings,
    /// Keys that seal secrets at rest (provider tokens) in the store.
    #[serde(default)]
    pub secrets: SecretsSettings,
}

/// Keys that seal secrets at rest, each written `<key id>:<base64 of 32 bytes>`. With
/// none set, the embedded demo generates one into `<data_dir>/secrets.key`; a start
/// with a real provider refuses (a key beside the data protects nothing at rest).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SecretsSettings {
    /// The key new values are sealed with (never printed).
    #[serde(default)]
    pub key: Option<SecretString>,
    /// Older keys, only to open values sealed before a rotation (never printed).
    #[serde(default)]
    pub old_keys: Vec<SecretString>,
    /// A file of keys instead of `key`/`old_keys`: one per line, the first seals.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// Outbound alert webhook settings (Standard Webhooks signing).
#[derive(Clone, Debug, Deserialize)]
pub struct AlertSettings {
    /// Where alerts are POSTed; empty: alerts are off.
    pub url: String,
    /// `whsec_` followed by the base64 signing key (never printed).
    pub secret: SecretString,
    /// Timeout of one delivery attempt.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// First retry delay after a failed delivery; doubles per attempt (full jitter).
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Retry delay cap.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// An alert not delivered within this long after it was raised is dropped (logged).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

/// Sweeper settings.
#[derive(Clone, Debug, Deserialize)]
pub struct SweeperSettings {
    /// How often it looks for due retry records.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// Pending inbox entries older than this are re-driven (their sync never committed).
    #[serde(with = "humantime_serde")]
    pub stale_inbox_after: Duration,
    /// Most retry records re-driven per tick (the rest wait for the next one); the
    /// polling pass has the same per-tick limit.
    pub batch: usize,
    /// Polling fallback: a linked account with no successful sync for this long is
    /// asked to sync (webhooks can be lost for good).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

/// HTTP server settings.
#[derive(Clone, Debug, Deserialize)]
pub struct ServerSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Largest webhook body.
    pub webhook_body_limit_bytes: usize,
    /// Largest API body.
    pub api_body_limit_bytes: usize,
    /// Pending inbox entries (all accounts) past which webhooks are refused with 429 and
    /// `Retry-After`, so a stalled sync path cannot grow the disk without bound.
    pub max_inbox_depth: u64,
    /// Bearer token of the admin API (everything but webhooks, health, metrics and the
    /// dashboard shell). Unset: generated at first start into `<data_dir>/admin-token`
    /// and reused. Never printed (`SecretString`'s Debug is a mask).
    #[serde(default)]
    pub admin_token: Option<SecretString>,
}

/// Store settings.
#[derive(Clone, Debug, Deserialize)]
pub struct StoreSettings {
    /// Data directory.
    pub data_dir: PathBuf,
    /// sled cache size.
    pub cache_capacity_bytes: u64,
    /// Webhook dedup window.
    #[serde(with = "humantime_serde")]
    pub dedup_ttl: Duration,
    /// How long a flush round waits for more writers while the store is busy.
    #[serde(with = "humantime_serde")]
    pub group_commit_window: Duration,
    /// Which store keeps the data: the embedded sled store, or a PostgreSQL database.
    pub backend: StoreBackend,
    /// The PostgreSQL store (read only when `backend` is `postgres`).
    pub postgres: PostgresSettings,
}

/// Where the data lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// sled, embedded in the process, in `store.data_dir`.
    Sled,
    /// PostgreSQL at `store.postgres.url`.
    Postgres,
}

/// PostgreSQL store settings.
#[derive(Clone, Debug, Deserialize)]
pub struct PostgresSettings {
    /// `postgres://user:password@host:port/database` (never printed: it may hold a
    /// password).
    pub url: SecretString,
    /// The schema holding acctor's tables, created if missing.
    pub schema: String,
    /// Connections in the pool.
    pub pool_size: u32,
    /// Longest a statement may run before the database cancels it.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Longest to wait for a connection (to open one, or for a free one in the pool).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

/// Plaid client settings.
#[derive(Clone, Debug, Deserialize)]
pub struct PlaidSettings {
    /// Base URL; empty means the embedded sandbox.
    pub base_url: String,
    /// Client id.
    pub client_id: String,
    /// Secret (never printed).
    pub secret: SecretString,
    /// Per-request timeout.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// `/transactions/sync` page size.
    pub sync_page_size: u32,
    /// `/transactions/get` page size.
    pub window_page_size: u32,
    /// Oldest accepted webhook `iat`.
    #[serde(with = "humantime_serde")]
    pub max_webhook_age: Duration,
    /// Client-side budget: `/transactions/sync` calls per minute per item (0: none).
    pub sync_budget_per_minute: u32,
    /// How many of those may go at once before calls wait for the refill.
    pub sync_budget_burst: u32,
    /// Retries in place of a page call that failed transiently (5xx, transport), so a
    /// flaky provider does not cost the pages already fetched (0..=10).
    pub page_retries: u32,
    /// The wait before the first such retry; the n-th waits n times this.
    #[serde(with = "humantime_serde")]
    pub page_retry_delay: Duration,
}

/// Account actor settings.
#[derive(Clone, Debug, Deserialize)]
pub struct ActorSettings {
    /// Idle time before passivation.
    #[serde(with = "humantime_serde")]
    pub passivate_after: Duration,
    /// Timeout of calls into actors.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// At shutdown, how long syncs already running may take to commit before they are
    /// abandoned (nothing of an abandoned sync is written; its webhooks stay in the
    /// inbox for the next start). No new sync starts once shutdown begins.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// First retry delay after a failed sync.
    #[serde(with = "humantime_serde")]
    pub sync_retry_initial: Duration,
    /// Retry delay cap.
    #[serde(with = "humantime_serde")]
    pub sync_retry_max: Duration,
    /// Minimum time between the starts of two syncs of one account when webhooks keep
    /// arriving: a burst becomes one sync per interval.
    #[serde(with = "humantime_serde")]
    pub min_sync_interval: Duration,
    /// Delay before the first restart of a failed (panicked or erroring) account actor;
    /// each further failure within the window doubles it.
    #[serde(with = "humantime_serde")]
    pub restart_backoff_initial: Duration,
    /// Cap of the restart delay.
    #[serde(with = "humantime_serde")]
    pub restart_backoff_max: Duration,
    /// More failures than this within `restart_window` quarantine the account.
    pub max_restarts: u32,
    /// The sliding window failures are counted in.
    #[serde(with = "humantime_serde")]
    pub restart_window: Duration,
    /// Consecutive failed syncs after which an account is marked failed and no longer
    /// retried until `POST /v1/accounts/{id}/resume`.
    pub max_sync_attempts: u32,
    /// The least delay before retrying after the provider rate-limited a sync.
    #[serde(with = "humantime_serde")]
    pub rate_limit_backoff: Duration,
}

/// Simulated provider settings.
#[derive(Clone, Debug, Deserialize)]
pub struct SandboxSettings {
    /// Run inside `acctor serve` when no Plaid base URL is set.
    pub embedded: bool,
    /// Listen address.
    pub listen: SocketAddr,
    /// Accepted client id.
    pub client_id: String,
    /// Accepted secret.
    pub secret: SecretString,
    /// Webhook target; empty means the embedding acctor.
    pub webhook_url: String,
    /// Demo items linked at start-up.
    pub demo_items: u32,
    /// Generated history per demo item.
    pub demo_history: u32,
    /// Demo activity interval (zero: none).
    #[serde(with = "humantime_serde")]
    pub demo_tick: Duration,
    /// Seed for generated data.
    pub seed: u64,
    /// Start the embedded sandbox and the demo afresh (`--reset-demo`): its saved state
    /// is deleted and the demo accounts are purged and linked again.
    pub reset_demo: bool,
    /// Whether `POST /v1/sandbox/account-openings/{id}/status` is served.
    pub simulate_bank_webhooks: bool,
    /// Account openings the demo starts.
    pub demo_openings: u32,
    /// Objects per type of the demo's Stripe account (0: no Stripe demo).
    pub demo_stripe_objects: u32,
}

/// `[bank]`: the bank that opens accounts.
#[derive(Clone, Debug, Deserialize)]
pub struct BankSettings {
    /// API base URL; empty: the embedded sandbox bank.
    pub base_url: String,
    /// Bearer API key.
    pub api_key: SecretString,
    /// Webhook signing secrets (one, or two while rotating).
    pub webhook_secrets: Vec<SecretString>,
    /// Largest accepted distance between a webhook's timestamp and now.
    #[serde(with = "humantime_serde")]
    pub webhook_tolerance: Duration,
    /// Timeout of one async, status or card call.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Timeout of one legacy synchronous call.
    #[serde(with = "humantime_serde")]
    pub legacy_timeout: Duration,
}

/// `[stripe]`: linked Stripe accounts (their keys and endpoint secrets come with each
/// link, not from here).
#[derive(Clone, Debug, Deserialize)]
pub struct StripeSettings {
    /// API base URL; empty: the embedded sandbox's Stripe.
    pub base_url: String,
    /// Timeout of one call.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests per second per test-mode account (backfill, re-fetch, catch-up and
    /// pushes together); 0: unlimited.
    pub test_rate: u32,
    /// Requests per second per live-mode account; 0: unlimited.
    pub live_rate: u32,
    /// Largest accepted distance between a webhook's timestamp and now.
    #[serde(with = "humantime_serde")]
    pub webhook_tolerance: Duration,
    /// A sync reads `/v1/events` when its last catch-up is older than this (and always
    /// after a start or a failed sync).
    #[serde(with = "humantime_serde")]
    pub catch_up_interval: Duration,
    /// How long Stripe keeps events: a catch-up from further back re-backfills.
    #[serde(with = "humantime_serde")]
    pub event_retention: Duration,
    /// Tries of one call that was rate limited or failed transiently, waiting out
    /// `Retry-After` or backing off in between, before the sync fails (its progress
    /// kept).
    pub call_attempts: u32,
    /// Objects per list page (1..=100).
    pub page_size: u32,
    /// Windows of `created` a backfill lists at once per type (1..=16).
    pub backfill_parallel: u32,
    /// How often every mirrored type is listed again and compared with the local copy.
    #[serde(with = "humantime_serde")]
    pub drift_check_interval: Duration,
}

/// `[operations]`: account openings.
#[derive(Clone, Debug, Deserialize)]
pub struct OperationSettings {
    /// Accepted markets (ISO 3166-1 alpha-2, upper case).
    pub markets: Vec<String>,
    /// The path of a market and segment whose flag was never set.
    pub async_by_default: bool,
    /// Status poll interval while the bank has not decided.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Poll interval after escalation.
    #[serde(with = "humantime_serde")]
    pub slow_poll_interval: Duration,
    /// Escalate once after this long without a bank decision.
    #[serde(with = "humantime_serde")]
    pub escalate_after: Duration,
    /// Dedup window of (request id, status).
    #[serde(with = "humantime_serde")]
    pub dedup_ttl: Duration,
    /// Failures of the next step before the operation is step_failed.
    pub max_step_attempts: u32,
    /// First retry delay of a failed step.
    #[serde(with = "humantime_serde")]
    pub step_retry_initial: Duration,
    /// Largest retry delay of a failed step.
    #[serde(with = "humantime_serde")]
    pub step_retry_max: Duration,
    /// Base URL of the dashboard for deep links; empty: `http://<server.listen>`.
    pub public_url: String,
}

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or a value has the wrong type.
    #[error("invalid configuration: {0}")]
    Load(String),
    /// A value is out of range.
    #[error("invalid configuration: {field}: {reason}")]
    Invalid {
        /// Dotted field path.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Prefix of the environment variables that override settings (`ACCTOR__SECTION__KEY`).
const ENV_PREFIX: &str = "ACCTOR__";

/// The settings whose value is text.
const TEXT_KEYS: &[&str] = &[
    "server.admin_token",
    "store.data_dir",
    "store.postgres.url",
    "store.postgres.schema",
    "plaid.base_url",
    "plaid.client_id",
    "plaid.secret",
    "sandbox.client_id",
    "sandbox.secret",
    "sandbox.webhook_url",
    "alerts.url",
    "alerts.secret",
    "bank.base_url",
    "bank.api_key",
    "stripe.base_url",
    "operations.public_url",
];

/// The settings whose value is a secret: never quoted in an error.
const SECRET_KEYS: &[&str] = &[
    "server.admin_token",
    "store.postgres.url",
    "plaid.secret",
    "sandbox.secret",
    "alerts.secret",
    "bank.api_key",
    "bank.webhook_secrets",
];

/// The `ACCTOR__…` variables as a figment provider. figment's `Env` reads every
/// variable's text as a TOML-like value (`1234…` a number, `true` a bool, `[a]` an
/// array), which a text setting then refuses: an all-digit admin token or client id
/// could not be set, and the error quoted it. This reads variables with `Env` and
/// parses them as it does, except that text settings (and non-ASCII text) keep their
/// text.
struct EnvLayer {
    /// `(section.key, text)`, keys as `Env` maps them (prefix off, `__` to `.`,
    /// lowercase).
    vars: Vec<(String, String)>,
}

impl EnvLayer {
    fn env() -> Env {
        Env::prefixed(ENV_PREFIX).split("__")
    }

    fn from_process() -> EnvLayer {
        EnvLayer::from_vars(
            Self::env()
                .iter()
                .map(|(key, text)| (key.to_string(), text)),
        )
    }

    /// Variables already mapped to keys (tests pass their own instead of the
    /// process-global environment).
    fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> EnvLayer {
        EnvLayer {
            vars: vars.into_iter().collect(),
        }
    }
}

impl figment::Provider for EnvLayer {
    fn metadata(&self) -> figment::Metadata {
        Self::env().metadata()
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        use figment::value::{Dict, Value};
        /// Later variables win; dicts merge (as `Env` merges them).
        fn merge(into: &mut Dict, from: Dict) {
            for (key, value) in from {
                match (into.get_mut(&key), value) {
                    (Some(Value::Dict(_, existing)), Value::Dict(_, nested)) => {
                        merge(existing, nested)
                    }
                    (_, value) => {
                        into.insert(key, value);
                    }
                }
            }
        }
        let mut dict = Dict::new();
        for (key, text) in &self.vars {
            // figment 0.10.19's string unescaping slices by char index, so parsing text
            // with a backslash after a non-ASCII character panics. No non-text setting
            // takes non-ASCII text other than as a plain string, so it stays one.
            let value = if TEXT_KEYS.contains(&key.as_str()) || !text.is_ascii() {
                Value::from(text.clone())
            } else {
                text.parse().unwrap_or_else(|never| match never {})
            };
            // `Env::iter` drops keys with an empty segment, so there is a dict.
            if let Some(nested) = figment::util::nest(key, value).into_dict() {
                merge(&mut dict, nested);
            }
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

/// A load error as text; an error about a secret names the key without its value
/// (figment quotes the offending value).
fn describe(err: figment::Error) -> String {
    err.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            if SECRET_KEYS.contains(&key.as_str()) {
                format!("{key}: must be a string (the value is a secret and is not shown)")
            } else {
                e.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl Settings {
    /// Defaults, then `file` if given, then `ACCTOR__…` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(EnvLayer::from_process());
        Settings::from_figment(figment)
    }

    /// The loader's last step: extracts the merged sources and validates them. Tests
    /// merge their own sources here in place of a file and the (process-global)
    /// environment.
    pub(crate) fn from_figment(figment: Figment) -> Result<Settings, ConfigError> {
        let settings: Settings = figment
            .extract()
            .map_err(|e| ConfigError::Load(describe(e)))?;
        settings.validate()?;
        Ok(settings)
    }

    /// The compiled-in defaults alone (tests start from these).
    pub fn defaults() -> Settings {
        let settings: Settings = Figment::from(Toml::string(DEFAULT_TOML))
            .extract()
            // The defaults are compiled in and covered by a unit test.
            .expect("compiled-in defaults parse");
        settings
    }

    /// Checks ranges and relations between values.
    /// The PostgreSQL settings' own checks (the URL's reachability is checked when the
    /// store opens, where an unreachable database is one clear line).
    fn validate_postgres(&self) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, reason: &str| ConfigError::Invalid {
            field,
            reason: reason.to_string(),
        };
        let postgres = &self.store.postgres;
        if self.store.backend == StoreBackend::Postgres {
            let url = postgres.url.expose_secret();
            if url.is_empty() {
                return Err(invalid(
                    "store.postgres.url",
                    "must be set when store.backend is \"postgres\" (postgres://user:password@host:5432/database)",
                ));
            }
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(invalid(
                    "store.postgres.url",
                    "must start with postgres:// or postgresql://",
                ));
            }
        }
        let schema_ok = !postgres.schema.is_empty()
            && postgres.schema.len() <= 63
            && postgres
                .schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !postgres.schema.as_bytes()[0].is_ascii_digit()
            && !postgres.schema.starts_with("pg_");
        if !schema_ok {
            return Err(invalid(
                "store.postgres.schema",
                "must be 1 to 63 lowercase letters, digits or underscores, not starting with a digit or pg_",
            ));
        }
        if !(1..=1000).contains(&postgres.pool_size) {
            return Err(invalid(
                "store.postgres.pool_size",
                "must be between 1 and 1000",
            ));
        }
        if postgres.statement_timeout < Duration::from_millis(100) {
            return Err(invalid(
                "store.postgres.statement_timeout",
                "must be at least 100ms",
            ));
        }
        if postgres.connect_timeout < Duration::from_millis(100) {
            return Err(invalid(
                "store.postgres.connect_timeout",
                "must be at least 100ms",
            ));
        }
        Ok(())
    }

    /// The `[bank]` and `[operations]` checks.
    fn validate_operations(&self) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, reason: &str| ConfigError::Invalid {
            field,
            reason: reason.to_string(),
        };
        let url = &self.bank.base_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid(
                "bank.base_url",
                "must start with http:// or https://",
            ));
        }
        if url.is_empty() && !self.sandbox.embedded {
            return Err(invalid(
                "bank.base_url",
                "is empty and sandbox.embedded is false: set the bank's URL or enable the sandbox",
            ));
        }
        let secrets = &self.bank.webhook_secrets;
        if secrets.is_empty() || secrets.len() > 2 {
            return Err(invalid(
                "bank.webhook_secrets",
                "must hold one secret, or two while rotating",
            ));
        }
        if secrets.iter().any(|s| s.expose_secret().len() < 16) {
            return Err(invalid(
                "bank.webhook_secrets",
                "each secret must be at least 16 characters",
            ));
        }
        let url = &self.stripe.base_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid(
                "stripe.base_url",
                "must start with http:// or https://",
            ));
        }
        if url.is_empty() && !self.sandbox.embedded {
            return Err(invalid(
                "stripe.base_url",
                "is empty and sandbox.embedded is false: set https://api.stripe.com or enable the sandbox",
            ));
        }
        if !(1..=100).contains(&self.stripe.page_size) {
            return Err(invalid("stripe.page_size", "must be within 1..=100"));
        }
        if !(1..=16).contains(&self.stripe.backfill_parallel) {
            return Err(invalid("stripe.backfill_parallel", "must be within 1..=16"));
        }
        if self.stripe.call_attempts == 0 {
            return Err(invalid("stripe.call_attempts", "must be at least 1"));
        }
        for (field, value) in [
            ("stripe.request_timeout", self.stripe.request_timeout),
            ("stripe.webhook_tolerance", self.stripe.webhook_tolerance),
            ("stripe.catch_up_interval", self.stripe.catch_up_interval),
            ("stripe.event_retention", self.stripe.event_retention),
            (
                "stripe.drift_check_interval",
                self.stripe.drift_check_interval,
            ),
            ("bank.webhook_tolerance", self.bank.webhook_tolerance),
            ("bank.request_timeout", self.bank.request_timeout),
            ("bank.legacy_timeout", self.bank.legacy_timeout),
            ("operations.poll_interval", self.operations.poll_interval),
            (
                "operations.slow_poll_interval",
                self.operations.slow_poll_interval,
            ),
            ("operations.escalate_after", self.operations.escalate_after),
            ("operations.dedup_ttl", self.operations.dedup_ttl),
            (
                "operations.step_retry_initial",
                self.operations.step_retry_initial,
            ),
        ] {
            if value.is_zero() {
                return Err(invalid(field, "must be greater than zero"));
            }
        }
        let ops = &self.operations;
        if ops.markets.is_empty()
            || ops
                .markets
                .iter()
                .any(|m| m.len() != 2 || !m.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(invalid(
                "operations.markets",
                "must list ISO 3166-1 alpha-2 codes in upper case, e.g. [\"NL\", \"BE\"]",
            ));
        }
        if ops.step_retry_initial > ops.step_retry_max {
            return Err(invalid(
                "operations.step_retry_initial",
                "must be at most operations.step_retry_max",
            ));
        }
        if !(1..=100).contains(&ops.max_step_attempts) {
            return Err(invalid(
                "operations.max_step_attempts",
                "must be between 1 and 100",
            ));
        }
        let public = &ops.public_url;
        if !(public.is_empty() || public.starts_with("http://") || public.starts_with("https://")) {
            return Err(invalid(
                "operations.public_url",
                "must start with http:// or https://",
            ));
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                field,
                reason: reason.into(),
            }
        }
        if self.server.webhook_body_limit_bytes < 256 {
            return Err(invalid(
                "server.webhook_body_limit_bytes",
                "must be at least 256",
            ));
        }
        if self.server.max_inbox_depth == 0 {
            return Err(invalid("server.max_inbox_depth", "must be at least 1"));
        }
        if let Some(token) = &self.server.admin_token {
            let token = token.expose_secret();
            if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(
                    "server.admin_token",
                    "must be at least 16 characters without whitespace",
                ));
            }
        }
        if self.server.api_body_limit_bytes < 1024 {
            return Err(invalid(
                "server.api_body_limit_bytes",
                "must be at least 1024",
            ));
        }
        if self.store.data_dir.as_os_str().is_empty() {
            return Err(invalid("store.data_dir", "must not be empty"));
        }
        if self.store.group_commit_window > Duration::from_millis(50) {
            return Err(invalid(
                "store.group_commit_window",
                "must be at most 50ms (it adds to every acknowledgement under load)",
            ));
        }
        if self.store.dedup_ttl.is_zero() {
            return Err(invalid("store.dedup_ttl", "must be greater than zero"));
        }
        self.validate_postgres()?;
        self.validate_operations()?;
        if !(1..=500).contains(&self.plaid.sync_page_size) {
            return Err(invalid("plaid.sync_page_size", "must be between 1 and 500"));
        }
        if self.plaid.page_retries > 10 {
            return Err(invalid("plaid.page_retries", "must be at most 10"));
        }
        if !(1..=500).contains(&self.plaid.window_page_size) {
            return Err(invalid(
                "plaid.window_page_size",
                "must be between 1 and 500",
            ));
        }
        let url = &self.plaid.base_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid(
                "plaid.base_url",
                "must start with http:// or https://",
            ));
        }
        if self.plaid.base_url.is_empty() && !self.sandbox.embedded {
            return Err(invalid(
                "plaid.base_url",
                "is empty and sandbox.embedded is false: set a Plaid URL or enable the sandbox",
            ));
        }
        if self.plaid.request_timeout.is_zero() {
            return Err(invalid(
                "plaid.request_timeout",
                "must be greater than zero",
            ));
        }
        if self.plaid.max_webhook_age.is_zero() {
            return Err(invalid(
                "plaid.max_webhook_age",
                "must be greater than zero",
            ));
        }
        if !self.alerts.url.is_empty() {
            let url = &self.alerts.url;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid("alerts.url", "must start with http:// or https://"));
            }
            if crate::outbound::decode_secret(&self.alerts.secret).is_none() {
                return Err(invalid(
                    "alerts.secret",
                    "must be whsec_ followed by a base64 key of 24 to 64 bytes",
                ));
            }
            if self.alerts.request_timeout.is_zero() {
                return Err(invalid(
                    "alerts.request_timeout",
                    "must be greater than zero",
                ));
            }
            if self.alerts.retry_initial.is_zero()
                || self.alerts.retry_initial > self.alerts.retry_max
            {
                return Err(invalid(
                    "alerts.retry_initial",
                    "must be greater than zero and at most alerts.retry_max",
                ));
            }
            if self.alerts.max_age.is_zero() {
                return Err(invalid("alerts.max_age", "must be greater than zero"));
            }
        }
        if self.actors.call_timeout.is_zero() {
            return Err(invalid("actors.call_timeout", "must be greater than zero"));
        }
        if self.actors.sync_retry_initial.is_zero()
            || self.actors.sync_retry_initial > self.actors.sync_retry_max
        {
            return Err(invalid(
                "actors.sync_retry_initial",
                "must be greater than zero and at most actors.sync_retry_max",
            ));
        }
        if self.actors.restart_backoff_initial.is_zero()
            || self.actors.restart_backoff_initial > self.actors.restart_backoff_max
        {
            return Err(invalid(
                "actors.restart_backoff_initial",
                "must be greater than zero and at most actors.restart_backoff_max",
            ));
        }
        if self.actors.max_restarts == 0 || self.actors.max_restarts > 1000 {
            return Err(invalid("actors.max_restarts", "must be between 1 and 1000"));
        }
        if self.actors.restart_window < self.actors.restart_backoff_max {
            return Err(invalid(
                "actors.restart_window",
                "must be at least actors.restart_backoff_max (otherwise failures spaced by the capped backoff never add up to a quarantine)",
            ));
        }
        if self.actors.min_sync_interval > Duration::from_secs(3600) {
            return Err(invalid("actors.min_sync_interval", "must be at most 1h"));
        }
        if self.actors.max_sync_attempts == 0 {
            return Err(invalid("actors.max_sync_attempts", "must be at least 1"));
        }
        if self.actors.rate_limit_backoff > Duration::from_secs(24 * 3600) {
            return Err(invalid("actors.rate_limit_backoff", "must be at most 24h"));
        }
        if self.sweeper.tick.is_zero() || self.sweeper.tick > Duration::from_secs(3600) {
            return Err(invalid(
                "sweeper.tick",
                "must be greater than zero and at most 1h",
            ));
        }
        if self.sweeper.stale_inbox_after.is_zero() {
            return Err(invalid(
                "sweeper.stale_inbox_after",
                "must be greater than zero",
            ));
        }
        if self.sweeper.batch == 0 {
            return Err(invalid("sweeper.batch", "must be at least 1"));
        }
        // The sweeper looks once per tick: a shorter interval could not be honoured.
        if self.sweeper.poll_interval < self.sweeper.tick {
            return Err(invalid(
                "sweeper.poll_interval",
                "must be at least sweeper.tick",
            ));
        }
        if self.secrets.key_file.is_some()
            && (self.secrets.key.is_some() || !self.secrets.old_keys.is_empty())
        {
            return Err(invalid(
                "secrets.key_file",
                "set either secrets.key_file or secrets.key (with secrets.old_keys), not both",
            ));
        }
        if self.secrets.key.is_none() && !self.secrets.old_keys.is_empty() {
            return Err(invalid(
                "secrets.old_keys",
                "needs secrets.key (the key that seals new values)",
            ));
        }
        if let Some(key) = &self.secrets.key {
            let specs: Vec<&str> = std::iter::once(key)
                .chain(&self.secrets.old_keys)
                .map(|k| k.expose_secret())
                .collect();
            if let Err(error) = crate::secrets::Keyring::from_specs(&specs) {
                return Err(invalid("secrets.key", error.to_string()));
            }
        }
        if !self.sandbox.webhook_url.is_empty()
            && !self.sandbox.webhook_url.starts_with("http://")
            && !self.sandbox.webhook_url.starts_with("https://")
        {
            return Err(invalid(
                "sandbox.webhook_url",
                "must start with http:// or https://",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "config_fuzz.rs"]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_in_defaults_are_valid() {
        let settings = Settings::defaults();
        settings.validate().expect("defaults validate");
        assert_eq!(settings.store.dedup_ttl, Duration::from_secs(15 * 60));
    }

    #[test]
    fn out_of_range_page_size_is_rejected_with_its_field() {
        let mut settings = Settings::defaults();
        settings.plaid.sync_page_size = 501;
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("plaid.sync_page_size"), "{err}");
    }

    #[test]
    fn restart_settings_are_validated_with_their_field() {
        let mut settings = Settings::defaults();
        settings.actors.restart_backoff_initial = settings.actors.restart_backoff_max * 2;
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("actors.restart_backoff_initial"), "{err}");

        let mut settings = Settings::defaults();
        settings.actors.max_restarts = 0;
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("actors.max_restarts"), "{err}");

        let mut settings = Settings::defaults();
        settings.actors.restart_window = settings.actors.restart_backoff_max / 2;
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("actors.restart_window"), "{err}");
    }

    #[test]
    fn sweeper_and_retry_settings_are_validated_with_their_field() {
        let mut settings = Settings::defaults();
        settings.sweeper.tick = Duration::ZERO;
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("sweeper.tick"), "{err}");

        let mut settings = Settings::defaults();
        settings.sweeper.stale_inbox_after = Duration::ZERO;
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("sweeper.stale_inbox_after"), "{err}");

        let mut settings = Settings::defaults();
        assert_eq!(
            settings.sweeper.poll_interval,
            Duration::from_secs(6 * 3600)
        );
        settings.sweeper.poll_interval = settings.sweeper.tick / 2;
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("sweeper.poll_interval"), "{err}");

        let mut settings = Settings::defaults();
        settings.actors.max_sync_attempts = 0;
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("actors.max_sync_attempts"), "{err}");
    }

    #[test]
    fn admin_token_is_validated_and_never_printed() {
        let mut settings = Settings::defaults();
        assert!(settings.server.admin_token.is_none());
        settings.server.admin_token = Some(SecretString::from("short".to_owned()));
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("server.admin_token"), "{err}");
        assert!(!err.contains("short"), "{err}");

        let token = "a-long-enough-admin-token";
        settings.server.admin_token = Some(SecretString::from(token.to_owned()));
        settings.validate().expect("valid token");
        let printed = format!("{settings:?}");
        assert!(!printed.contains(token), "{printed}");
        assert!(!printed.contains("acctor-demo-secret"), "{printed}");
    }

    #[test]
    fn secrets_keys_are_validated_and_never_printed() {
        let key = format!("k1:{}", "A".repeat(43));
        let mut settings = Settings::defaults();
        assert!(settings.secrets.key.is_none() && settings.secrets.key_file.is_none());
        settings.secrets.key = Some(SecretString::from(key.clone()));
        settings.validate().expect("a valid key");
        assert!(!format!("{settings:?}").contains(&key));

        settings.secrets.old_keys = vec![SecretString::from(key.clone())];
        let err = settings.validate().unwrap_err().to_string();
        assert!(
            err.contains("secrets.key") && err.contains("twice"),
            "{err}"
        );
        settings.secrets.old_keys = vec![SecretString::from("k0:c2hvcnQ".to_owned())];
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("must be 32"), "{err}");
        assert!(!err.contains("c2hvcnQ"), "{err}");

        settings.secrets.old_keys.clear();
        settings.secrets.key_file = Some(PathBuf::from("/etc/acctor/keys"));
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("secrets.key_file"), "{err}");
        settings.secrets.key = None;
        settings.validate().expect("a key file alone");
    }

    #[test]
    fn missing_config_file_is_a_clear_error() {
        let err = Settings::load(Some(Path::new("/nonexistent/acctor.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}
