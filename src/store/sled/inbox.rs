//! The webhook inbox: deduplicated ingest (plain operations in a crash-safe order, not a
//! transaction: see `ingest`), the entries kept for items not linked yet, claims of a
//! running sync, and the dedup records' expiry.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::keys::{self, DEDUP, INBOX, LOOKUP, UNROUTED};
use super::{io, SledStore};
use crate::domain::{AccountId, InboxEntry, ProviderKind};
use crate::store::{InboxStore, IncomingWebhook, IngestOutcome, StoreError};

/// A webhook kept for an item that is not linked yet, adopted into an inbox on link.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct UnroutedEvent {
    pub(super) seq: u64,
    pub(super) provider: ProviderKind,
    pub(super) item_id: String,
    pub(super) kind: String,
    pub(super) received_at: DateTime<Utc>,
    pub(super) body: serde_json::Value,
}

/// A dedup key's record: a repeat is a duplicate until `expires_at`, but only while the
/// entry it repeats (`seq`) is still pending. Plaid sends byte-identical bodies for
/// distinct `SYNC_UPDATES_AVAILABLE` events, so a repeat of an event whose sync already
/// committed may announce new data and must not be dropped: it is appended anew.
/// Without a `seq` (records of older versions, and operation events, whose dedup is by
/// TTL alone) a repeat is a duplicate until `expires_at`. Every record, whatever wrote
/// it, expires through [`InboxStore::purge_expired_dedup`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct DedupRecord {
    pub(super) expires_at: DateTime<Utc>,
    #[serde(default)]
    pub(super) seq: Option<u64>,
}

/// When a dedup key received at `received_at` stops deduplicating.
pub(super) fn dedup_expiry(received_at: DateTime<Utc>, ttl: Duration) -> DateTime<Utc> {
    received_at
        .checked_add_signed(chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl InboxStore for SledStore {
    fn ingest(
        &self,
        webhook: IncomingWebhook,
        dedup_ttl: Duration,
    ) -> Result<IngestOutcome, StoreError> {
        // No multi-tree transaction here, on purpose: sled transactions take a
        // process-wide write lock that `flush` holds shared for the whole of its I/O, so
        // every ingest would stall behind every group-commit round. Plain operations in
        // a careful order keep the invariants instead:
        // - the entry is written before its dedup record, so a crash between the two
        //   only lets a retry append the event again (one harmless extra sync);
        // - nothing is acknowledged before `durable()` covers all of these writes;
        // - two racing copies of one body may both be appended: same harmless outcome.
        let _gate = self.write_gate()?;
        let item_key = keys::item_key(webhook.provider, &webhook.item_id);
        let resolve = || -> Result<Option<AccountId>, StoreError> {
            match self.lookup.get(&item_key).map_err(io)? {
                Some(bytes) => Ok(Some(keys::decode(LOOKUP, &bytes)?)),
                None => Ok(None),
            }
        };
        let mut account_id = resolve()?;
        let dedup_key = webhook.dedup_key;
        if let Some(bytes) = self.dedup.get(dedup_key).map_err(io)? {
            let seen: DedupRecord = keys::decode(DEDUP, &bytes)?;
            if seen.expires_at > webhook.received_at {
                let still_pending = match seen.seq {
                    // Records written before seqs were kept: trust the TTL.
                    None => true,
                    Some(seq) => {
                        // Pending and not yet read by a running sync: the next sync
                        // starts fetching after this repeat arrived, so it covers it.
                        // Once a sync has read the original, that sync's data may be
                        // older than this repeat: then it is a new event.
                        let in_inbox = match &account_id {
                            Some(account) => {
                                let key = keys::inbox_key(account, seq);
                                self.inbox.contains_key(&key).map_err(io)?
                                    && !self.claims.contains_key(&key).map_err(io)?
                            }
                            None => false,
                        };
                        in_inbox
                            || self
                                .unrouted
                                .contains_key(keys::unrouted_key(
                                    webhook.provider,
                                    &webhook.item_id,
                                    seq,
                                ))
                                .map_err(io)?
                    }
                };
                if still_pending {
                    return Ok(IngestOutcome::Duplicate { account_id });
                }
            }
        }

        let seq = self.db_generate_id()?;
        let inbox_entry = |account: &AccountId| InboxEntry {
            seq,
            account_id: account.clone(),
            provider: webhook.provider,
            kind: webhook.kind.clone(),
            received_at: webhook.received_at,
            body: webhook.body.clone(),
        };
        match &account_id {
            Some(account) => {
                self.inbox
                    .insert(
                        keys::inbox_key(account, seq),
                        keys::encode(INBOX, &inbox_entry(account))?,
                    )
                    .map_err(io)?;
            }
            None => {
                let key = keys::unrouted_key(webhook.provider, &webhook.item_id, seq);
                let event = UnroutedEvent {
                    seq,
                    provider: webhook.provider,
                    item_id: webhook.item_id.clone(),
                    kind: webhook.kind.clone(),
                    received_at: webhook.received_at,
                    body: webhook.body.clone(),
                };
                self.unrouted
                    .insert(key.as_slice(), keys::encode(UNROUTED, &event)?)
                    .map_err(io)?;
                // A link that committed after the lookup above may have finished its
                // adoption passes before this insert: adopt the entry here then. The
                // link's pass and this one race on `remove`; exactly one moves it.
                if let Some(account) = resolve()? {
                    if self.unrouted.remove(key.as_slice()).map_err(io)?.is_some() {
                        self.inbox
                            .insert(
                                keys::inbox_key(&account, seq),
                                keys::encode(INBOX, &inbox_entry(&account))?,
                            )
                            .map_err(io)?;
                    }
                    account_id = Some(account);
                }
            }
        }
        let expires_at = dedup_expiry(webhook.received_at, dedup_ttl);
        self.dedup
            .insert(
                &dedup_key[..],
                keys::encode(
                    DEDUP,
                    &DedupRecord {
                        expires_at,
                        seq: Some(seq),
                    },
                )?,
            )
            .map_err(io)?;
        self.inbox_depth.fetch_add(1, Ordering::Relaxed);
        Ok(IngestOutcome::Accepted { seq, account_id })
    }

    fn pending_inbox(&self, id: &AccountId) -> Result<Vec<InboxEntry>, StoreError> {
        self.inbox
            .scan_prefix(keys::account_prefix(id))
            .values()
            .map(|bytes| keys::decode(INBOX, &bytes.map_err(io)?))
            .collect()
    }

    fn claim_pending_inbox(&self, id: &AccountId) -> Result<Vec<InboxEntry>, StoreError> {
        let _gate = self.write_gate()?;
        let entries = self.pending_inbox(id)?;
        for entry in &entries {
            self.claims
                .insert(keys::inbox_key(id, entry.seq), &[] as &[u8])
                .map_err(io)?;
        }
        Ok(entries)
    }

    fn accounts_with_pending_inbox(&self) -> Result<Vec<AccountId>, StoreError> {
        // One key per account: after each hit, jump past that account's prefix.
        let mut accounts = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        loop {
            let Some(entry) = self.inbox.range(from.clone()..).next() else {
                return Ok(accounts);
            };
            let (key, _) = entry.map_err(io)?;
            let account = keys::inbox_key_account(&key).ok_or_else(|| StoreError::Corrupt {
                tree: INBOX,
                detail: "inbox key without an account prefix".to_string(),
            })?;
            match keys::prefix_end(&keys::account_prefix(&account)) {
                Some(end) => from = end,
                None => {
                    accounts.push(account);
                    return Ok(accounts);
                }
            }
            accounts.push(account);
        }
    }

    fn inbox_depth(&self) -> Result<u64, StoreError> {
        Ok(self.inbox_depth.load(Ordering::Relaxed))
    }

    fn purge_expired_dedup(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let _gate = self.write_gate()?;
        let mut purged = 0;
        for item in self.dedup.iter() {
            let (key, value) = item.map_err(io)?;
            let expired = match keys::decode::<DedupRecord>(DEDUP, &value) {
                Ok(record) => record.expires_at <= now,
                // A dedup record only saves a redundant sync (effects are idempotent), so
                // an unreadable one is dropped rather than blocking the sweep forever.
                Err(e) => {
                    tracing::warn!(error = %e, "dropping unreadable dedup record");
                    true
                }
            };
            // Compare-and-swap: an ingest may have refreshed the key since the scan.
            if expired
                && self
                    .dedup
                    .compare_and_swap(&key, Some(&value), None as Option<&[u8]>)
                    .map_err(io)?
                    .is_ok()
            {
                purged += 1;
            }
        }
        Ok(purged)
    }
}

#[cfg(test)]
#[path = "inbox_tests.rs"]
mod tests;
