//! The alert outbox: undelivered alerts by id, each with its [`DueKind::Outbox`] entry in
//! the due index (subject: the alert id), which is what the sender reads.
//!
//! The outbox is read through its due-time index, never in id order: during a receiver
//! outage the oldest alerts keep failing and wait out their backoff, and a read in id
//! order would hand the sender those not-yet-due ones first, so alerts behind them
//! would never be tried. The outbox's entries are rebuilt from the outbox on every open
//! (the outbox holds at most `alerts.max_age` of alerts), which also covers stores
//! written before the due index existed, or before the outbox had a due-time index.

use chrono::{DateTime, Utc};
use sled::transaction::Transactional;
use sled::Tree;

use super::due::TxDue;
use super::keys::{self, OUTBOX};
use super::migrate::DueTrees;
use super::{from_tx, io, tx, SledStore, TxResult};
use crate::incidents::{AlertEventType, AlertRecord, Incident};
use crate::store::{DueKind, OutboxStore, StoreError};

/// Rewrites the outbox's entries of the due index from the outbox itself. Run once at
/// open, before any writer: whatever a crash or an older version left in the index, it
/// matches the outbox afterwards. Undecodable records are left to the sender (it
/// reports them when it reads them by id) and logged here.
pub(super) fn rebuild_outbox_due(outbox: &Tree, due: &DueTrees<'_>) -> Result<(), StoreError> {
    let prefix = [DueKind::Outbox.tag()];
    for tree in [due.entries, due.subjects] {
        for key in tree.scan_prefix(prefix).keys() {
            tree.remove(key.map_err(io)?).map_err(io)?;
        }
    }
    for item in outbox.iter() {
        let (key, bytes) = item.map_err(io)?;
        match keys::decode::<AlertRecord>(OUTBOX, &bytes) {
            Ok(record) => {
                let subject = DueKind::alert_subject(record.id);
                let millis = keys::due_millis(record.next_attempt_at);
                due.subjects
                    .insert(
                        keys::due_subject_key(DueKind::Outbox, &subject),
                        &millis.to_be_bytes(),
                    )
                    .map_err(io)?;
                due.entries
                    .insert(keys::due_key(DueKind::Outbox, millis, &subject), &[])
                    .map_err(io)?;
            }
            Err(error) => {
                tracing::error!(alert_key = ?key.as_ref(), %error, "outbox record unreadable: not indexed");
            }
        }
    }
    Ok(())
}

/// Appends an alert about `incident` to the outbox, due at once, inside the caller's
/// transaction (with its entry in the due index).
pub(super) fn enqueue_alert(
    outbox: &sled::transaction::TransactionalTree,
    due: TxDue<'_>,
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
    due.put(
        DueKind::Outbox,
        &DueKind::alert_subject(id),
        keys::due_millis(at),
        &[],
    )
}

impl SledStore {
    /// The alert of an outbox entry's subject; `None` for an entry whose alert is gone
    /// (a removal that raced the read), which the next rebuild drops.
    fn alert_of_subject(&self, subject: &str) -> Result<Option<AlertRecord>, StoreError> {
        let Some(id) = DueKind::alert_id(subject) else {
            return Ok(None);
        };
        match self.outbox.get(keys::id_key(id)).map_err(io)? {
            Some(bytes) => Ok(Some(keys::decode(OUTBOX, &bytes)?)),
            None => Ok(None),
        }
    }
}

impl OutboxStore for SledStore {
    fn pending_alerts(&self, limit: usize) -> Result<Vec<AlertRecord>, StoreError> {
        self.outbox
            .iter()
            .values()
            .take(limit)
            .map(|bytes| keys::decode(OUTBOX, &bytes.map_err(io)?))
            .collect()
    }

    /// One range read of the outbox's part of the due index, then each record by id.
    fn due_alerts(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<AlertRecord>, StoreError> {
        let end = u64::try_from(now.timestamp_millis().saturating_add(1)).unwrap_or(0);
        let mut out = Vec::new();
        for raw in self.due_range(DueKind::Outbox, Some(end)) {
            if out.len() >= limit {
                break;
            }
            if let Some(record) = self.alert_of_subject(&raw?.subject)? {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// The earliest alert's record's exact time (the index keeps milliseconds).
    fn next_alert_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        for raw in self.due_range(DueKind::Outbox, None) {
            if let Some(record) = self.alert_of_subject(&raw?.subject)? {
                return Ok(Some(record.next_attempt_at));
            }
        }
        Ok(None)
    }

    fn update_alert(&self, record: &AlertRecord) -> Result<(), StoreError> {
        let _gate = self.write_gate()?;
        let key = keys::id_key(record.id);
        let value = keys::encode(OUTBOX, record)?;
        let subject = DueKind::alert_subject(record.id);
        let millis = keys::due_millis(record.next_attempt_at);
        // Only while it is still pending: a concurrent removal (delivered) wins.
        (&self.outbox, &self.due, &self.due_subjects)
            .transaction(|(outbox, entries, subjects)| {
                if outbox.get(key)?.is_none() {
                    return Ok(());
                }
                outbox.insert(&key, value.as_slice())?;
                TxDue { entries, subjects }.put(DueKind::Outbox, &subject, millis, &[])
            })
            .map_err(from_tx)
    }

    fn remove_alert(&self, alert_id: u64) -> Result<(), StoreError> {
        let _gate = self.write_gate()?;
        let key = keys::id_key(alert_id);
        let subject = DueKind::alert_subject(alert_id);
        (&self.outbox, &self.due, &self.due_subjects)
            .transaction(|(outbox, entries, subjects)| {
                // An unreadable record still goes (the sender must be able to drop it),
                // and its entry with it.
                if outbox.remove(&key)?.is_some() {
                    TxDue { entries, subjects }.remove(DueKind::Outbox, &subject)?;
                }
                Ok(())
            })
            .map_err(from_tx)
    }
}
