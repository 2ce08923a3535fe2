//! The outbox: undelivered [`OutboxMessage`]s by id, each with its [`DueKind::Outbox`]
//! entry in the due index (subject: the message id), which is what the sender reads.
//!
//! The outbox is read through its due-time index, never in id order: during a receiver
//! outage the oldest messages keep failing and wait out their backoff, and a read in id
//! order would hand the sender those not-yet-due ones first, so messages behind them
//! would never be tried. The outbox's entries are rebuilt from the outbox on every open
//! (the outbox holds at most a max age of messages), which also covers stores written
//! before the due index existed, or before the outbox had a due-time index.
//!
//! Records written before the outbox was generic are alert records
//! ([`LegacyAlertRecord`]); they decode through a fallback into the alert message they
//! stand for, whose body is built exactly as a new alert's is, so an alert enqueued by
//! an older version is delivered with the same bytes. A failed attempt rewrites such a
//! record in the current encoding; nothing else converts them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sled::transaction::Transactional;
use sled::Tree;

use super::due::TxDue;
use super::keys::{self, OUTBOX};
use super::migrate::DueTrees;
use super::{from_tx, io, tx, SledStore, TxResult};
use crate::domain::incidents::{AlertEventType, Incident};
use crate::store::{DueKind, OutboxMessage, OutboxStore, StoreError};

/// An outbox record as versions before the generic outbox wrote it: an alert about an
/// incident. Only read (and written by tests that build an old data dir).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct LegacyAlertRecord {
    /// Store-assigned id; also the stable `webhook-id` of every delivery attempt.
    pub(super) id: u64,
    /// What happened.
    pub(super) event_type: AlertEventType,
    /// The incident as it was at that moment.
    pub(super) incident: Incident,
    /// When it was enqueued.
    pub(super) created_at: DateTime<Utc>,
    /// When the next attempt is due.
    pub(super) next_attempt_at: DateTime<Utc>,
    /// Failed attempts so far.
    pub(super) attempts: u32,
    /// What the last failed attempt said.
    pub(super) last_error: Option<String>,
}

/// [`OutboxMessage::alert`], its encoding error as the store reports it. The one place
/// an incident change becomes a message here: new alerts and the fallback for
/// old records both go through it, so both send the same bytes.
fn alert_message(
    id: u64,
    event_type: AlertEventType,
    incident: &Incident,
    at: DateTime<Utc>,
) -> Result<OutboxMessage, StoreError> {
    OutboxMessage::alert(id, event_type, incident, at).map_err(|e| StoreError::Corrupt {
        tree: OUTBOX,
        detail: format!("cannot encode alert body: {e}"),
    })
}

impl LegacyAlertRecord {
    /// The message this old record stands for, with its delivery state kept.
    fn into_message(self) -> Result<OutboxMessage, StoreError> {
        let message = alert_message(self.id, self.event_type, &self.incident, self.created_at)?;
        Ok(OutboxMessage {
            next_attempt_at: self.next_attempt_at,
            attempts: self.attempts,
            last_error: self.last_error,
            ..message
        })
    }
}

/// Decodes an outbox record: the current [`OutboxMessage`], or else an alert record of
/// an older version, converted. An unreadable record reports the current format's error.
pub(super) fn decode_message(bytes: &[u8]) -> Result<OutboxMessage, StoreError> {
    match keys::decode::<OutboxMessage>(OUTBOX, bytes) {
        Ok(message) => Ok(message),
        Err(error) => match keys::decode::<LegacyAlertRecord>(OUTBOX, bytes) {
            Ok(old) => old.into_message(),
            Err(_) => Err(error),
        },
    }
}

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
        match decode_message(&bytes) {
            Ok(message) => {
                let subject = DueKind::outbox_subject(message.id);
                let millis = keys::due_millis(message.next_attempt_at);
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
                tracing::error!(message_key = %hex::encode(key.as_ref()), %error, "outbox record unreadable: not indexed");
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
    let message = tx(alert_message(id, event_type, incident, at))?;
    outbox.insert(&keys::id_key(id), tx(keys::encode(OUTBOX, &message))?)?;
    due.put(
        DueKind::Outbox,
        &DueKind::outbox_subject(id),
        keys::due_millis(at),
        &[],
    )
}

impl SledStore {
    /// The message of an outbox entry's subject; `None` for an entry whose message is
    /// gone (a removal that raced the read), which the next rebuild drops.
    fn message_of_subject(&self, subject: &str) -> Result<Option<OutboxMessage>, StoreError> {
        let Some(id) = DueKind::outbox_id(subject) else {
            return Ok(None);
        };
        match self.outbox.get(keys::id_key(id)).map_err(io)? {
            Some(bytes) => Ok(Some(decode_message(&bytes)?)),
            None => Ok(None),
        }
    }
}

impl OutboxStore for SledStore {
    fn pending_outbox(&self, limit: usize) -> Result<Vec<OutboxMessage>, StoreError> {
        self.outbox
            .iter()
            .values()
            .take(limit)
            .map(|bytes| decode_message(&bytes.map_err(io)?))
            .collect()
    }

    /// One range read of the outbox's part of the due index, then each record by id.
    fn due_outbox(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let end = u64::try_from(now.timestamp_millis().saturating_add(1)).unwrap_or(0);
        let mut out = Vec::new();
        for raw in self.due_range(DueKind::Outbox, Some(end)) {
            if out.len() >= limit {
                break;
            }
            if let Some(message) = self.message_of_subject(&raw?.subject)? {
                out.push(message);
            }
        }
        Ok(out)
    }

    /// The earliest message's record's exact time (the index keeps milliseconds).
    fn next_outbox_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        for raw in self.due_range(DueKind::Outbox, None) {
            if let Some(message) = self.message_of_subject(&raw?.subject)? {
                return Ok(Some(message.next_attempt_at));
            }
        }
        Ok(None)
    }

    fn update_outbox(&self, message: &OutboxMessage) -> Result<(), StoreError> {
        let _gate = self.write_gate()?;
        let key = keys::id_key(message.id);
        let value = keys::encode(OUTBOX, message)?;
        let subject = DueKind::outbox_subject(message.id);
        let millis = keys::due_millis(message.next_attempt_at);
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

    fn remove_outbox(&self, message_id: u64) -> Result<(), StoreError> {
        let _gate = self.write_gate()?;
        let key = keys::id_key(message_id);
        let subject = DueKind::outbox_subject(message_id);
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

/// A standalone enqueue, for tests of the sender that need messages of destinations no
/// change produces (users enqueue inside their change's transaction).
#[cfg(test)]
impl SledStore {
    pub(crate) fn enqueue_for_test(
        &self,
        destination: crate::store::Destination,
        payload: &serde_json::Value,
        at: DateTime<Utc>,
    ) -> u64 {
        let id = self.files.db.generate_id().expect("id");
        let message = OutboxMessage {
            id,
            destination,
            event_type: "test.event".to_string(),
            payload: crate::store::JsonBody::of(payload).expect("body"),
            created_at: at,
            next_attempt_at: at,
            attempts: 0,
            last_error: None,
        };
        self.outbox
            .insert(
                keys::id_key(id),
                keys::encode(OUTBOX, &message).expect("encode"),
            )
            .expect("insert");
        self.update_outbox(&message).expect("index");
        id
    }
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
