//! One item's fault switches, as the admin API shows and updates them: the fixed
//! switches (mutation during pagination, rejected cursors, duplicate webhooks, latency,
//! login required, the per-item request limit) and the item's own random faults.

use serde::{Deserialize, Serialize};

use super::faults::{self, ErrorKind, RandomFaults, RandomFaultsUpdate, Reorder};

/// Fault switches of one item, as the admin API shows them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Faults {
    /// The next n mid-loop sync pages answer `TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION`.
    pub mutation_during_pagination: u32,
    /// The next n syncs with a non-empty cursor answer the `INVALID_FIELD` cursor error.
    pub reject_cursor: u32,
    /// Every following webhook is delivered this many extra times.
    pub duplicate_webhooks: u32,
    /// Added to every `/transactions/sync` call (inside the in-flight window).
    pub sync_latency_ms: u64,
    /// Added to every `/transactions/sync` call after its page was computed: the answer
    /// shows the data as it was before the wait (changes made meanwhile are not in it).
    #[serde(default)]
    pub sync_latency_after_ms: u64,
    /// Whether the item is in `ITEM_LOGIN_REQUIRED`.
    pub login_required: bool,
    /// Plaid's per-Item request limit on `/transactions/sync`, enforced: past it, calls
    /// answer 429 `RATE_LIMIT_EXCEEDED` / `TRANSACTIONS_SYNC_LIMIT` until the window
    /// ends. Not a random fault: every call over the limit is refused.
    #[serde(default)]
    pub sync_limit: Option<SyncLimit>,
    /// Random faults this item sets itself, over the global ones (see `faults`).
    #[serde(flatten)]
    pub random: RandomFaults,
}

/// A fixed-window request limit: at most `max_calls` calls per `window_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncLimit {
    /// Calls allowed per window (0: every call is refused).
    pub max_calls: u32,
    /// The window, in milliseconds (0 counts as 1).
    pub window_ms: u64,
}

/// A partial update of [`Faults`]: absent fields keep their value.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultsUpdate {
    pub mutation_during_pagination: Option<u32>,
    pub reject_cursor: Option<u32>,
    pub duplicate_webhooks: Option<u32>,
    pub sync_latency_ms: Option<u64>,
    pub sync_latency_after_ms: Option<u64>,
    pub login_required: Option<bool>,
    #[serde(default, deserialize_with = "faults::nullable")]
    pub sync_limit: Option<Option<SyncLimit>>,
    #[serde(default)]
    pub error_rate: Option<std::collections::BTreeMap<faults::Endpoint, Option<f64>>>,
    #[serde(default, deserialize_with = "faults::nullable")]
    pub error_mix: Option<Option<std::collections::BTreeMap<ErrorKind, f64>>>,
    #[serde(default)]
    pub latency_ms: Option<std::collections::BTreeMap<faults::Endpoint, Option<u64>>>,
    #[serde(default, deserialize_with = "faults::nullable")]
    pub webhook_drop_rate: Option<Option<f64>>,
    #[serde(default, deserialize_with = "faults::nullable")]
    pub webhook_duplicate_rate: Option<Option<f64>>,
    #[serde(default, deserialize_with = "faults::nullable")]
    pub webhook_reorder: Option<Option<Reorder>>,
}

impl FaultsUpdate {
    /// The random-fault part of the update.
    pub fn random(&self) -> RandomFaultsUpdate {
        RandomFaultsUpdate {
            error_rate: self.error_rate.clone(),
            error_mix: self.error_mix.clone(),
            latency_ms: self.latency_ms.clone(),
            webhook_drop_rate: self.webhook_drop_rate,
            webhook_duplicate_rate: self.webhook_duplicate_rate,
            webhook_reorder: self.webhook_reorder,
        }
    }
}
