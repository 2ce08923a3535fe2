//! The bank's counters (`GET /bank/admin/stats`): what tests read to prove how acctor
//! behaved at the bank, above all that it never opened two accounts for one request or
//! issued two cards for one step. Kept under the bank's mutex with the state they
//! count, so a snapshot is consistent with the openings and cards it describes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A snapshot of the bank's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankStats {
    /// `POST /v2/account-openings` calls that reached the bank's books (after the
    /// injected faults; replays and refused reuses included).
    pub create_calls: u64,
    /// Those calls per idempotency key.
    pub creates_by_key: BTreeMap<String, u64>,
    /// Distinct asynchronous openings created.
    pub openings: u64,
    /// `POST /v1/accounts` calls that reached the bank's books.
    pub legacy_calls: u64,
    /// Distinct legacy openings created.
    pub legacy_openings: u64,
    /// `GET /v2/account-openings/{id}` calls (injected errors included).
    pub status_calls: u64,
    /// `POST /v1/cards` calls (injected failures included).
    pub card_calls: u64,
    /// Distinct cards issued.
    pub cards_issued: u64,
    /// Cards issued per customer id: more than one means a customer got two cards.
    pub cards_issued_by_customer: BTreeMap<String, u64>,
    /// Card ids issued per idempotency key: always one each, or idempotency broke.
    pub card_ids_by_key: BTreeMap<String, Vec<String>>,
    /// Calls refused because their idempotency key came with another body.
    pub key_reuse_refusals: u64,
    /// Webhook deliveries started (each copy of a duplicate and each release of a held
    /// webhook counts; retries do not).
    pub webhooks_sent: u64,
    /// Deliveries the receiver acknowledged with a 2xx.
    pub webhooks_delivered: u64,
    /// Deliveries given up after the last retry.
    pub webhooks_failed: u64,
    /// HTTP attempts, retries included.
    pub webhook_attempts: u64,
    /// Webhooks dropped by the drop fault (never sent).
    pub webhooks_dropped: u64,
    /// Webhooks sent a second time by the duplicate fault.
    pub webhooks_duplicated: u64,
    /// Webhooks held by the reorder fault (released by a flush).
    pub webhooks_held: u64,
    /// Webhooks not sent because no webhook URL is configured.
    pub webhooks_without_url: u64,
    /// Creates answered 500 by `create_fail_next`.
    pub injected_create_failures: u64,
    /// Card calls answered 500 by `card_fail_next`.
    pub injected_card_failures: u64,
    /// Status calls answered 503 by `status_error_rate`.
    pub injected_status_errors: u64,
    /// Calls answered 429 by `rate_limit_next`.
    pub injected_rate_limits: u64,
}
