//! The alert outbox: undelivered alerts by id, and the due-time index the sender reads.
//!
//! The outbox is read through its due-time index, never in id order: during a receiver
//! outage the oldest alerts keep failing and wait out their backoff, and a read in id
//! order would hand the sender those not-yet-due ones first, so alerts behind them
//! would never be tried. The index is rebuilt from the outbox on every open (the outbox
//! holds at most `alerts.max_age` of alerts), which also covers stores written before
//! it existed.

use chrono::{DateTime, Utc};
use sled::transaction::{Transactional, TransactionalTree};
use sled::Tree;

use super::incidents::IncidentTrees;
use super::keys::{self, OUTBOX};
use super::{from_tx, io, tx, SledStore, TxResult};
use crate::incidents::{AlertEventType, AlertRecord, Incident};
use crate::store::{OutboxStore, StoreError};

/// The due-index key of `record`.
fn due_key(record: &AlertRecord) -> [u8; 16] {
    keys::outbox_due_key(record.next_attempt_at.timestamp_millis(), record.id)
}

/// Rewrites the outbox's due-time index from the outbox itself. Run once at open,
/// before any writer: whatever a crash or an older version left in the index, it
/// matches the outbox afterwards. Undecodable records are left to the sender (it
/// reports them when it reads them by id) and logged here.
pub(super) fn rebuild_outbox_due(outbox: &Tree, outbox_due: &Tree) -> Result<(), StoreError> {
    outbox_due.clear().map_err(io)?;
    for item in outbox.iter() {
        let (key, bytes) = item.map_err(io)?;
        match keys::decode::<AlertRecord>(OUTBOX, &bytes) {
            Ok(record) => {
                outbox_due.insert(due_key(&record), &[]).map_err(io)?;
            }
            Err(error) => {
                tracing::error!(alert_key = ?key.as_ref(), %error, "outbox record unreadable: not indexed");
            }
        }
    }
    Ok(())
}

/// Appends an alert about `incident` to the outbox, due at once, inside the caller's
/// transaction.
pub(super) fn enqueue_alert(
    outbox: &TransactionalTree,
    outbox_due: &TransactionalTree,
    event_type: AlertEventType,
    incident: &Incident,
    at: DateTime<Utc>,
) -> TxResult<()> {
    let id = outbox.generate_id()?;
    let record = AlertRecord {
        id,
        event_type,
        incident: incident.clone(),
        created_at: at,
        next_attempt_at: at,
        attempts: 0,
        last_error: None,
    };
    outbox.insert(&keys::id_key(id), tx(keys::encode(OUTBOX, &record))?)?;
    outbox_due.insert(&due_key(&record), &[])?;
    Ok(())
}

impl IncidentTrees<'_> {
    pub(super) fn pending_alerts(&self, limit: usize) -> Result<Vec<AlertRecord>, StoreError> {
        self.outbox
            .iter()
            .values()
            .take(limit)
            .map(|bytes| keys::decode(OUTBOX, &bytes.map_err(io)?))
            .collect()
    }

    /// Up to `limit` alerts due at or before `now` (to the millisecond), earliest due
    /// first: one range read of the due-time index, then each record by id.
    pub(super) fn due_alerts(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<AlertRecord>, StoreError> {
        let end = keys::outbox_due_key(now.timestamp_millis().saturating_add(1), 0);
        let mut out = Vec::new();
        for key in self.outbox_due.range(..end).keys() {
            if out.len() >= limit {
                break;
            }
            if let Some(record) = self.alert_of_due_key(&key.map_err(io)?)? {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// When the earliest alert is due (its record's exact time), `None` if none waits.
    pub(super) fn next_alert_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        for key in self.outbox_due.iter().keys() {
            if let Some(record) = self.alert_of_due_key(&key.map_err(io)?)? {
                return Ok(Some(record.next_attempt_at));
            }
        }
        Ok(None)
    }

    /// The alert a due-index key points at; `None` for an entry whose alert is gone (a
    /// removal that raced the read), which the next rebuild drops.
    fn alert_of_due_key(&self, key: &[u8]) -> Result<Option<AlertRecord>, StoreError> {
        let Some(id) = keys::outbox_due_id(key) else {
            return Ok(None);
        };
        match self.outbox.get(keys::id_key(id)).map_err(io)? {
            Some(bytes) => Ok(Some(keys::decode(OUTBOX, &bytes)?)),
            None => Ok(None),
        }
    }

    pub(super) fn update_alert(&self, record: &AlertRecord) -> Result<(), StoreError> {
        let key = keys::id_key(record.id);
        let value = keys::encode(OUTBOX, record)?;
        let new_due = due_key(record);
        // Only while it is still pending: a concurrent removal (delivered) wins.
        (self.outbox, self.outbox_due)
            .transaction(|(outbox, outbox_due)| {
                let Some(old) = outbox.get(key)? else {
                    return Ok(());
                };
                let old: AlertRecord = tx(keys::decode(OUTBOX, &old))?;
                outbox_due.remove(&due_key(&old))?;
                outbox.insert(&key, value.as_slice())?;
                outbox_due.insert(&new_due, &[])?;
                Ok(())
            })
            .map_err(from_tx)
    }

    pub(super) fn remove_alert(&self, alert_id: u64) -> Result<(), StoreError> {
        let key = keys::id_key(alert_id);
        (self.outbox, self.outbox_due)
            .transaction(|(outbox, outbox_due)| {
                let Some(old) = outbox.remove(&key)? else {
                    return Ok(());
                };
                // An unreadable record still goes (the sender must be able to drop
                // it); its index entry, if any, points at nothing and is skipped.
                if let Ok(old) = keys::decode::<AlertRecord>(OUTBOX, &old) {
                    outbox_due.remove(&due_key(&old))?;
                }
                Ok(())
            })
            .map_err(from_tx)
    }
}

impl OutboxStore for SledStore {
    fn pending_alerts(&self, limit: usize) -> Result<Vec<AlertRecord>, StoreError> {
        self.incident_trees().pending_alerts(limit)
    }

    fn due_alerts(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<AlertRecord>, StoreError> {
        self.incident_trees().due_alerts(now, limit)
    }

    fn next_alert_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.incident_trees().next_alert_due()
    }

    fn update_alert(&self, record: &AlertRecord) -> Result<(), StoreError> {
        let _gate = self.write_gate()?;
        self.incident_trees().update_alert(record)
    }

    fn remove_alert(&self, alert_id: u64) -> Result<(), StoreError> {
        let _gate = self.write_gate()?;
        self.incident_trees().remove_alert(alert_id)
    }
}
