//! Incidents: the sled side of opening, refreshing, resolving and listing them.
//!
//! Opening and resolving are one multi-tree transaction over `incidents`,
//! `incident_open` and the outbox's trees: the at-most-one-open-per-(subject, kind)
//! index, the incident and its alert change together or not at all, so a crash can
//! neither leave two open incidents for one condition nor an alert for a change that
//! never happened.
//!
//! Incidents about operations needed no migration: a record is versioned JSON, and one
//! written before operations existed (`account_id` always present, no `operation_id`)
//! decodes as an account's incident; the open index's key is the subject's id, which
//! for an account is the key it had before.

use chrono::{DateTime, Utc};
use sled::transaction::{Transactional, TransactionalTree};
use sled::Tree;

use super::due::TxDue;
use super::keys::{self, INCIDENTS};
use super::outbox::enqueue_alert;
use super::{from_tx, io, tx, SledStore, TxResult};
use crate::domain::incidents::{
    AlertEventType, Incident, IncidentKind, IncidentQuery, IncidentSubject, OpenIncident,
};
use crate::store::{IncidentStore, StoreError};

/// Decodes a big-endian id key.
fn id_of(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

/// An incident record; one without exactly one subject is `Corrupt` (no version of
/// this store writes one).
fn decode_incident(bytes: &[u8]) -> Result<Incident, StoreError> {
    let incident: Incident = keys::decode(INCIDENTS, bytes)?;
    if incident.subject().is_none() {
        return Err(StoreError::Corrupt {
            tree: INCIDENTS,
            detail: format!(
                "incident {} has not exactly one of account_id and operation_id",
                incident.id
            ),
        });
    }
    Ok(incident)
}

/// Opens the incident of (subject, kind), or refreshes the open one, inside a
/// transaction over `incidents`, the open index, the outbox and the due index (an
/// operation's commit calls it inside its own).
pub(super) fn open_in(
    incidents: &TransactionalTree,
    index: &TransactionalTree,
    outbox: &TransactionalTree,
    due: TxDue<'_>,
    open: &OpenIncident,
) -> TxResult<Incident> {
    let open_key = keys::incident_open_key(open.subject.key(), open.kind.as_str());
    if let Some(existing) = index.get(&open_key)? {
        if let Some(bytes) = incidents.get(&existing)? {
            let mut incident: Incident = tx(decode_incident(&bytes))?;
            incident.refresh(open);
            incidents.insert(&existing, tx(keys::encode(INCIDENTS, &incident))?)?;
            return Ok(incident);
        }
        // An index entry without its incident cannot be written by this module; if it
        // exists anyway, a fresh incident replaces it below.
    }
    let id = incidents.generate_id()?;
    let incident = Incident::opened(id, open);
    let key = keys::id_key(id);
    incidents.insert(&key, tx(keys::encode(INCIDENTS, &incident))?)?;
    index.insert(open_key.as_slice(), &key)?;
    if open.notify {
        enqueue_alert(outbox, due, AlertEventType::Opened, &incident, open.at)?;
    }
    Ok(incident)
}

/// Resolves the open incident of (subject, kind), if any, inside a transaction over
/// the same trees as [`open_in`].
#[allow(
    clippy::too_many_arguments,
    reason = "the trees of one transaction, then what to resolve"
)]
pub(super) fn resolve_in(
    incidents: &TransactionalTree,
    index: &TransactionalTree,
    outbox: &TransactionalTree,
    due: TxDue<'_>,
    subject: &IncidentSubject,
    kind: IncidentKind,
    at: DateTime<Utc>,
    notify: bool,
) -> TxResult<Option<Incident>> {
    let open_key = keys::incident_open_key(subject.key(), kind.as_str());
    let Some(key) = index.remove(open_key.as_slice())? else {
        return Ok(None);
    };
    let Some(bytes) = incidents.get(&key)? else {
        return Ok(None);
    };
    let mut incident: Incident = tx(decode_incident(&bytes))?;
    incident.resolved_at = Some(at);
    incidents.insert(&key, tx(keys::encode(INCIDENTS, &incident))?)?;
    if notify {
        enqueue_alert(outbox, due, AlertEventType::Resolved, &incident, at)?;
    }
    Ok(Some(incident))
}

/// The trees an incident change writes, borrowed from the store.
pub(super) struct IncidentTrees<'a> {
    pub(super) incidents: &'a Tree,
    pub(super) open: &'a Tree,
    pub(super) outbox: &'a Tree,
    /// The due index (`due`, `due_subjects`): where an enqueued alert's entry goes.
    pub(super) due: &'a Tree,
    pub(super) due_subjects: &'a Tree,
}

impl IncidentTrees<'_> {
    pub(super) fn open_incident(&self, open: &OpenIncident) -> Result<Incident, StoreError> {
        (
            self.incidents,
            self.open,
            self.outbox,
            self.due,
            self.due_subjects,
        )
            .transaction(|(incidents, index, outbox, entries, subjects)| {
                open_in(incidents, index, outbox, TxDue { entries, subjects }, open)
            })
            .map_err(from_tx)
    }

    pub(super) fn resolve_incident(
        &self,
        subject: &IncidentSubject,
        kind: IncidentKind,
        at: DateTime<Utc>,
        notify: bool,
    ) -> Result<Option<Incident>, StoreError> {
        let open_key = keys::incident_open_key(subject.key(), kind.as_str());
        // Most calls find nothing open (every committed sync asks): skip the
        // transaction, and its process-wide lock, then.
        if self.open.get(&open_key).map_err(io)?.is_none() {
            return Ok(None);
        }
        (
            self.incidents,
            self.open,
            self.outbox,
            self.due,
            self.due_subjects,
        )
            .transaction(|(incidents, index, outbox, entries, subjects)| {
                let due = TxDue { entries, subjects };
                resolve_in(incidents, index, outbox, due, subject, kind, at, notify)
            })
            .map_err(from_tx)
    }

    pub(super) fn open_incident_of(
        &self,
        subject: &IncidentSubject,
        kind: IncidentKind,
    ) -> Result<Option<Incident>, StoreError> {
        let open_key = keys::incident_open_key(subject.key(), kind.as_str());
        let Some(key) = self.open.get(open_key).map_err(io)? else {
            return Ok(None);
        };
        match self.incidents.get(key).map_err(io)? {
            Some(bytes) => Ok(Some(decode_incident(&bytes)?)),
            None => Ok(None),
        }
    }

    pub(super) fn get_incident(&self, incident_id: u64) -> Result<Option<Incident>, StoreError> {
        match self.incidents.get(keys::id_key(incident_id)).map_err(io)? {
            Some(bytes) => Ok(Some(decode_incident(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Newest first. Filters are applied while scanning backwards from `after`; an
    /// `open` query reads only the open index (small), everything else scans the
    /// incidents tree, which grows only with conditions that needed a human.
    pub(super) fn list_incidents(
        &self,
        query: &IncidentQuery,
    ) -> Result<Vec<Incident>, StoreError> {
        let upper = match query.after {
            Some(after) => std::ops::Bound::Excluded(keys::id_key(after).to_vec()),
            None => std::ops::Bound::Unbounded,
        };
        let mut out = Vec::new();
        if query.limit == 0 {
            return Ok(out);
        }
        if query.state == crate::domain::incidents::IncidentState::Open {
            let mut ids: Vec<u64> = Vec::new();
            for value in self.open.iter().values() {
                if let Some(id) = id_of(&value.map_err(io)?) {
                    if query.after.is_none_or(|after| id < after) {
                        ids.push(id);
                    }
                }
            }
            ids.sort_unstable_by(|a, b| b.cmp(a));
            for id in ids {
                if let Some(incident) = self.get_incident(id)? {
                    if query.matches(&incident) {
                        out.push(incident);
                        if out.len() >= query.limit {
                            break;
                        }
                    }
                }
            }
            return Ok(out);
        }
        for item in self
            .incidents
            .range::<Vec<u8>, _>((std::ops::Bound::Unbounded, upper))
            .rev()
        {
            let (_, bytes) = item.map_err(io)?;
            let incident: Incident = decode_incident(&bytes)?;
            // Ids grow with opening time: once past `since`, nothing older can match.
            if query.since.is_some_and(|since| incident.opened_at < since) {
                break;
            }
            if query.matches(&incident) {
                out.push(incident);
                if out.len() >= query.limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

impl IncidentStore for SledStore {
    fn open_incident(&self, open: &OpenIncident) -> Result<Incident, StoreError> {
        let _gate = self.write_gate()?;
        self.incident_trees().open_incident(open)
    }

    fn resolve_incident(
        &self,
        subject: &IncidentSubject,
        kind: IncidentKind,
        at: DateTime<Utc>,
        notify: bool,
    ) -> Result<Option<Incident>, StoreError> {
        let _gate = self.write_gate()?;
        self.incident_trees()
            .resolve_incident(subject, kind, at, notify)
    }

    fn open_incident_of(
        &self,
        subject: &IncidentSubject,
        kind: IncidentKind,
    ) -> Result<Option<Incident>, StoreError> {
        self.incident_trees().open_incident_of(subject, kind)
    }

    fn get_incident(&self, incident_id: u64) -> Result<Option<Incident>, StoreError> {
        self.incident_trees().get_incident(incident_id)
    }

    fn list_incidents(&self, query: &IncidentQuery) -> Result<Vec<Incident>, StoreError> {
        self.incident_trees().list_incidents(query)
    }
}

#[cfg(test)]
mod tests {
    //! sled's own part of incidents and alerts: the outbox's due index rebuilt at open.
    //! The trait behaviour is in the contract suite (`store::contract::incidents`,
    //! `store::contract::outbox`).

    use std::sync::Arc;

    use chrono::TimeZone;
    use serde_json::json;

    use crate::domain::incidents::{IncidentKind, IncidentSubject, OpenIncident};
    use crate::domain::AccountId;
    use crate::store::{Durability, IncidentStore, OutboxStore, SledStore, SledStoreConfig};

    /// Opens (or reopens, once the previous handle let go of sled's lock) the store.
    fn open_store(dir: &tempfile::TempDir) -> Arc<SledStore> {
        crate::store::when_released(dir.path(), || {
            SledStore::open(SledStoreConfig {
                data_dir: dir.path().to_path_buf(),
                cache_capacity_bytes: 8 * 1024 * 1024,
                group_commit_window: std::time::Duration::ZERO,
            })
        })
    }

    fn at(minute: u32) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc
            .with_ymd_and_hms(2026, 1, 1, 0, minute, 0)
            .single()
            .expect("valid time")
    }

    /// A data dir written before incidents could be about operations: its records
    /// (`account_id` always present, no `operation_id`) and its open index (keyed by
    /// the account's id) are read as they are, with no migration.
    #[tokio::test]
    async fn incidents_written_before_operations_existed_are_read_refreshed_and_resolved() {
        let dir = tempfile::tempdir().expect("temp dir");
        let id = {
            let db = super::super::test_support::open_raw(dir.path());
            let id = db.generate_id().expect("id");
            let mut record = vec![1u8];
            record.extend_from_slice(
                serde_json::json!({
                    "id": id, "kind": "needs_reauth", "severity": "critical",
                    "account_id": "acc_old", "opened_at": at(1), "updated_at": at(1),
                    "resolved_at": null, "occurrences": 1, "details": {"code": "X"},
                })
                .to_string()
                .as_bytes(),
            );
            let incidents = db.open_tree(super::keys::INCIDENTS).expect("tree");
            incidents.insert(id.to_be_bytes(), record).expect("insert");
            // The old open key: the length-prefixed account id, then the kind.
            let mut open_key = (b"acc_old".len() as u32).to_be_bytes().to_vec();
            open_key.extend_from_slice(b"acc_oldneeds_reauth");
            let open = db.open_tree(super::keys::INCIDENT_OPEN).expect("tree");
            open.insert(open_key, &id.to_be_bytes()).expect("insert");
            db.flush().expect("flush");
            id
        };
        let store = open_store(&dir);
        let subject = IncidentSubject::Account(AccountId("acc_old".into()));
        let found = store
            .open_incident_of(&subject, IncidentKind::NeedsReauth)
            .expect("read")
            .expect("open");
        assert_eq!((found.id, found.subject()), (id, Some(subject.clone())));
        assert_eq!(found.operation_id, None);
        let refreshed = store
            .open_incident(&OpenIncident {
                subject: subject.clone(),
                kind: IncidentKind::NeedsReauth,
                details: json!({}),
                at: at(2),
                notify: false,
            })
            .expect("refresh");
        assert_eq!((refreshed.id, refreshed.occurrences), (id, 2));
        let resolved = store
            .resolve_incident(&subject, IncidentKind::NeedsReauth, at(3), false)
            .expect("resolve")
            .expect("was open");
        assert_eq!((resolved.id, resolved.resolved_at), (id, Some(at(3))));
    }

    #[tokio::test]
    async fn a_lost_outbox_due_index_is_rebuilt_from_the_outbox_at_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ids = {
            let store = open_store(&dir);
            for n in 0..2 {
                store
                    .open_incident(&OpenIncident {
                        subject: IncidentSubject::Account(AccountId(format!("acc_{n}"))),
                        kind: IncidentKind::NeedsReauth,
                        details: json!({}),
                        at: at(1),
                        notify: true,
                    })
                    .expect("open");
            }
            let mut alerts = store.pending_outbox(10).expect("outbox");
            alerts[0].next_attempt_at = at(5);
            alerts[0].attempts = 1;
            store.update_outbox(&alerts[0]).expect("update");
            store.durable().await.expect("durable");
            store.shutdown().await.expect("shutdown");
            alerts.iter().map(|a| a.id).collect::<Vec<_>>()
        };
        // A store written before the due index existed (or whose index a crash left
        // behind) gets it rebuilt from the outbox on open.
        {
            // The dropped store's last flush task may still hold the database for a
            // moment (sled's file lock): wait for it to let go.
            let db = super::super::test_support::open_raw(dir.path());
            // The outbox's part of the due index is lost.
            let prefix = [crate::store::DueKind::Outbox.tag()];
            for name in [super::keys::DUE, super::keys::DUE_SUBJECTS] {
                let tree = db.open_tree(name).expect("due index tree");
                for key in tree.scan_prefix(prefix).keys() {
                    tree.remove(key.expect("key")).expect("remove");
                }
            }
            db.flush().expect("flush");
        }
        let store = open_store(&dir);
        let due = store.due_outbox(at(1), 10).expect("due");
        assert_eq!(due.iter().map(|a| a.id).collect::<Vec<_>>(), [ids[1]]);
        let due = store.due_outbox(at(5), 10).expect("due");
        assert_eq!(
            due.iter().map(|a| a.id).collect::<Vec<_>>(),
            [ids[1], ids[0]]
        );
        assert_eq!(store.next_outbox_due().expect("next"), Some(at(1)));
        store.remove_outbox(ids[1]).expect("remove");
        assert_eq!(store.next_outbox_due().expect("next"), Some(at(5)));
        store.remove_outbox(ids[0]).expect("remove");
        assert_eq!(store.next_outbox_due().expect("next"), None);
    }
}
