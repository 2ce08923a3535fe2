//! One item's traffic counters (the admin API's `/admin/items/{id}/stats`): calls,
//! overlapping syncs, faults injected and webhooks dropped, duplicated or reordered.
//! Lock-free atomics, bumped by the handlers while they run.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::faults::ErrorKind;

/// Counters of one item's API traffic.
#[derive(Default)]
pub(crate) struct ItemStats {
    pub(super) sync_calls: AtomicU64,
    pub(super) get_calls: AtomicU64,
    pub(super) in_flight_syncs: AtomicU64,
    pub(super) max_concurrent_syncs: AtomicU64,
    pub(super) overlapping_syncs: AtomicU64,
    pub(super) webhooks_sent: AtomicU64,
    pub(super) mutation_errors_sent: AtomicU64,
    pub(super) cursor_rejections_sent: AtomicU64,
    pub(super) injected_internal_errors: AtomicU64,
    pub(super) injected_rate_limit_errors: AtomicU64,
    pub(super) injected_login_errors: AtomicU64,
    pub(super) injected_timeouts: AtomicU64,
    pub(super) sync_limit_rejections: AtomicU64,
    pub(super) webhooks_dropped: AtomicU64,
    pub(super) webhooks_duplicated: AtomicU64,
    pub(super) webhooks_reordered: AtomicU64,
}

/// A snapshot of an item's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemStatsSnapshot {
    /// `/transactions/sync` calls with this item's token.
    pub sync_calls: u64,
    /// `/transactions/get` calls with this item's token.
    pub get_calls: u64,
    /// Syncs being answered right now.
    pub in_flight_syncs: u64,
    /// Most syncs ever in flight at once.
    pub max_concurrent_syncs: u64,
    /// Syncs that started while another sync with the same token was in flight.
    pub overlapping_syncs: u64,
    /// Webhook deliveries (duplicates count, retries of one delivery do not).
    pub webhooks_sent: u64,
    /// `TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION` answers, natural or injected.
    pub mutation_errors_sent: u64,
    /// Cursor rejections, for bad cursors or injected.
    pub cursor_rejections_sent: u64,
    /// Injected 500 `INTERNAL_SERVER_ERROR` answers.
    #[serde(default)]
    pub injected_internal_errors: u64,
    /// Injected 429 rate-limit answers.
    #[serde(default)]
    pub injected_rate_limit_errors: u64,
    /// Draws of the random `login` fault (each answers 400 `ITEM_LOGIN_REQUIRED` and
    /// leaves the item in `login_required`); not the answers that state gives by itself.
    #[serde(default)]
    pub injected_login_errors: u64,
    /// Requests held without an answer by the `timeout` fault.
    #[serde(default)]
    pub injected_timeouts: u64,
    /// `/transactions/sync` calls refused with 429 by the item's `sync_limit`.
    #[serde(default)]
    pub sync_limit_rejections: u64,
    /// Webhooks fired but never delivered.
    #[serde(default)]
    pub webhooks_dropped: u64,
    /// Extra deliveries added by `webhook_duplicate_rate`.
    #[serde(default)]
    pub webhooks_duplicated: u64,
    /// Webhooks held back and released in a shuffled batch.
    #[serde(default)]
    pub webhooks_reordered: u64,
}

impl ItemStats {
    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a `/transactions/get` call.
    pub fn count_get(&self) {
        Self::bump(&self.get_calls);
    }

    /// Counts a webhook delivery.
    pub fn count_webhook(&self) {
        Self::bump(&self.webhooks_sent);
    }

    /// Counts an injected error (or timeout) of `kind`.
    pub fn count_injected(&self, kind: ErrorKind) {
        Self::bump(match kind {
            ErrorKind::Internal => &self.injected_internal_errors,
            ErrorKind::RateLimit => &self.injected_rate_limit_errors,
            ErrorKind::Login => &self.injected_login_errors,
            ErrorKind::Timeout => &self.injected_timeouts,
        });
    }

    /// Counts a dropped webhook.
    pub fn count_dropped(&self) {
        Self::bump(&self.webhooks_dropped);
    }

    /// Counts an extra delivery from the duplicate rate.
    pub fn count_duplicated(&self) {
        Self::bump(&self.webhooks_duplicated);
    }

    /// Counts `n` webhooks released in a shuffled batch.
    pub fn count_reordered(&self, n: u64) {
        self.webhooks_reordered.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> ItemStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ItemStatsSnapshot {
            sync_calls: get(&self.sync_calls),
            get_calls: get(&self.get_calls),
            in_flight_syncs: get(&self.in_flight_syncs),
            max_concurrent_syncs: get(&self.max_concurrent_syncs),
            overlapping_syncs: get(&self.overlapping_syncs),
            webhooks_sent: get(&self.webhooks_sent),
            mutation_errors_sent: get(&self.mutation_errors_sent),
            cursor_rejections_sent: get(&self.cursor_rejections_sent),
            injected_internal_errors: get(&self.injected_internal_errors),
            injected_rate_limit_errors: get(&self.injected_rate_limit_errors),
            injected_login_errors: get(&self.injected_login_errors),
            injected_timeouts: get(&self.injected_timeouts),
            sync_limit_rejections: get(&self.sync_limit_rejections),
            webhooks_dropped: get(&self.webhooks_dropped),
            webhooks_duplicated: get(&self.webhooks_duplicated),
            webhooks_reordered: get(&self.webhooks_reordered),
        }
    }
}

/// Marks one `/transactions/sync` call in flight for as long as it lives, including
/// when the handler is cancelled because the client went away.
pub(crate) struct InFlightSync<'a> {
    pub(super) stats: &'a ItemStats,
}

impl Drop for InFlightSync<'_> {
    fn drop(&mut self) {
        self.stats.in_flight_syncs.fetch_sub(1, Ordering::SeqCst);
    }
}
