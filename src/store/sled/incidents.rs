//! Incidents: the sled side of opening, refreshing, resolving and listing them.
//!
//! Opening and resolving are one multi-tree transaction over `incidents`,
//! `incident_open` and the outbox's trees: the at-most-one-open-per-(account, kind)
//! index, the incident and its alert change together or not at all, so a crash can
//! neither leave two open incidents for one condition nor an alert for a change that
//! never happened.

use chrono::{DateTime, Utc};
use sled::transaction::Transactional;
use sled::Tree;

use super::due::TxDue;
use super::keys::{self, INCIDENTS};
use super::outbox::enqueue_alert;
use super::{from_tx, io, tx, SledStore};
use crate::domain::incidents::{
    AlertEventType, Incident, IncidentKind, IncidentQuery, OpenIncident,
};
use crate::domain::AccountId;
use crate::store::{IncidentStore, StoreError};

/// Decodes a big-endian id key.
fn id_of(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
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
        let open_key = keys::incident_open_key(&open.account_id, open.kind.as_str());
        (
            self.incidents,
            self.open,
            self.outbox,
            self.due,
            self.due_subjects,
        )
            .transaction(|(incidents, index, outbox, entries, subjects)| {
                if let Some(existing) = index.get(&open_key)? {
                    if let Some(bytes) = incidents.get(&existing)? {
                        let mut incident: Incident = tx(keys::decode(INCIDENTS, &bytes))?;
                        incident.details = open.details.clone();
                        incident.updated_at = open.at;
                        incident.occurrences = incident.occurrences.saturating_add(1);
                        incidents.insert(&existing, tx(keys::encode(INCIDENTS, &incident))?)?;
                        return Ok(incident);
                    }
                    // An index entry without its incident cannot be written by this
                    // module; if it exists anyway, a fresh incident replaces it below.
                }
                let id = incidents.generate_id()?;
                let incident = Incident {
                    id,
                    kind: open.kind,
                    severity: open.kind.severity(),
                    account_id: open.account_id.clone(),
                    opened_at: open.at,
                    updated_at: open.at,
                    resolved_at: None,
                    occurrences: 1,
                    details: open.details.clone(),
                };
                let key = keys::id_key(id);
                incidents.insert(&key, tx(keys::encode(INCIDENTS, &incident))?)?;
                index.insert(open_key.as_slice(), &key)?;
                if open.notify {
                    enqueue_alert(
                        outbox,
                        TxDue { entries, subjects },
                        AlertEventType::Opened,
                        &incident,
                        open.at,
                    )?;
                }
                Ok(incident)
            })
            .map_err(from_tx)
    }

    pub(super) fn resolve_incident(
        &self,
        id: &AccountId,
        kind: IncidentKind,
        at: DateTime<Utc>,
        notify: bool,
    ) -> Result<Option<Incident>, StoreError> {
        let open_key = keys::incident_open_key(id, kind.as_str());
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
                let Some(key) = index.remove(open_key.as_slice())? else {
                    return Ok(None);
                };
                let Some(bytes) = incidents.get(&key)? else {
                    return Ok(None);
                };
                let mut incident: Incident = tx(keys::decode(INCIDENTS, &bytes))?;
                incident.resolved_at = Some(at);
                incidents.insert(&key, tx(keys::encode(INCIDENTS, &incident))?)?;
                if notify {
                    let due = TxDue { entries, subjects };
                    enqueue_alert(outbox, due, AlertEventType::Resolved, &incident, at)?;
                }
                Ok(Some(incident))
            })
            .map_err(from_tx)
    }

    pub(super) fn open_incident_of(
        &self,
        id: &AccountId,
        kind: IncidentKind,
    ) -> Result<Option<Incident>, StoreError> {
        let open_key = keys::incident_open_key(id, kind.as_str());
        let Some(key) = self.open.get(open_key).map_err(io)? else {
            return Ok(None);
        };
        match self.incidents.get(key).map_err(io)? {
            Some(bytes) => Ok(Some(keys::decode(INCIDENTS, &bytes)?)),
            None => Ok(None),
        }
    }

    pub(super) fn get_incident(&self, incident_id: u64) -> Result<Option<Incident>, StoreError> {
        match self.incidents.get(keys::id_key(incident_id)).map_err(io)? {
            Some(bytes) => Ok(Some(keys::decode(INCIDENTS, &bytes)?)),
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
            let incident: Incident = keys::decode(INCIDENTS, &bytes)?;
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
        id: &AccountId,
        kind: IncidentKind,
        at: DateTime<Utc>,
        notify: bool,
    ) -> Result<Option<Incident>, StoreError> {
        let _gate = self.write_gate()?;
        self.incident_trees().resolve_incident(id, kind, at, notify)
    }

    fn open_incident_of(
        &self,
        id: &AccountId,
        kind: IncidentKind,
    ) -> Result<Option<Incident>, StoreError> {
        self.incident_trees().open_incident_of(id, kind)
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
    use std::sync::Arc;

    use chrono::TimeZone;
    use serde_json::json;

    use crate::domain::incidents::{IncidentKind, IncidentQuery, IncidentState, OpenIncident};
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

    fn open(account: &str, kind: IncidentKind, minute: u32, notify: bool) -> OpenIncident {
        OpenIncident {
            account_id: AccountId(account.to_string()),
            kind,
            details: json!({ "minute": minute }),
            at: at(minute),
            notify,
        }
    }

    #[tokio::test]
    async fn opening_twice_refreshes_the_one_open_incident_and_resolving_closes_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open_store(&dir);
        let first = store
            .open_incident(&open("acc_a", IncidentKind::NeedsReauth, 1, true))
            .expect("open");
        let again = store
            .open_incident(&open("acc_a", IncidentKind::NeedsReauth, 2, true))
            .expect("open again");
        assert_eq!(first.id, again.id, "one open incident per (account, kind)");
        assert_eq!(again.occurrences, 2);
        assert_eq!(again.opened_at, at(1));
        assert_eq!(again.details, json!({ "minute": 2 }));
        // A refresh is not news: one alert for the opening only.
        assert_eq!(store.pending_outbox(10).expect("outbox").len(), 1);

        let other_kind = store
            .open_incident(&open("acc_a", IncidentKind::SyncFailed, 3, false))
            .expect("other kind");
        assert_ne!(other_kind.id, first.id);

        let resolved = store
            .resolve_incident(
                &AccountId("acc_a".into()),
                IncidentKind::NeedsReauth,
                at(4),
                true,
            )
            .expect("resolve")
            .expect("was open");
        assert_eq!(resolved.resolved_at, Some(at(4)));
        assert!(store
            .resolve_incident(
                &AccountId("acc_a".into()),
                IncidentKind::NeedsReauth,
                at(5),
                true
            )
            .expect("resolve again")
            .is_none());
        let alerts = store.pending_outbox(10).expect("outbox");
        assert_eq!(alerts.len(), 2, "opened + resolved");

        // Opening after resolving is a new incident.
        let reopened = store
            .open_incident(&open("acc_a", IncidentKind::NeedsReauth, 6, false))
            .expect("reopen");
        assert!(reopened.id > other_kind.id);
        assert_eq!(
            store
                .get_incident(first.id)
                .expect("get")
                .expect("kept")
                .resolved_at,
            Some(at(4))
        );
    }

    #[tokio::test]
    async fn due_messages_come_earliest_due_first_and_the_index_follows_every_change() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ids = {
            let store = open_store(&dir);
            for n in 0..3 {
                store
                    .open_incident(&open(
                        &format!("acc_{n}"),
                        IncidentKind::NeedsReauth,
                        1,
                        true,
                    ))
                    .expect("open");
            }
            let mut alerts = store.pending_outbox(10).expect("outbox");
            assert_eq!(store.due_outbox(at(0), 10).expect("due"), []);
            assert_eq!(store.due_outbox(at(1), 10).expect("due"), alerts);
            assert_eq!(store.next_outbox_due().expect("next"), Some(at(1)));
            // The oldest fails and waits: the younger ones come first, then it.
            alerts[0].next_attempt_at = at(5);
            alerts[0].attempts = 1;
            store.update_outbox(&alerts[0]).expect("update");
            let due: Vec<u64> = store
                .due_outbox(at(1), 10)
                .expect("due")
                .iter()
                .map(|a| a.id)
                .collect();
            assert_eq!(due, [alerts[1].id, alerts[2].id]);
            assert_eq!(store.due_outbox(at(1), 1).expect("due").len(), 1);
            store.remove_outbox(alerts[1].id).expect("remove");
            store.remove_outbox(alerts[2].id).expect("remove");
            assert_eq!(store.due_outbox(at(4), 10).expect("due"), []);
            assert_eq!(store.next_outbox_due().expect("next"), Some(at(5)));
            assert_eq!(
                store.due_outbox(at(5), 10).expect("due"),
                [alerts[0].clone()]
            );
            store.durable().await.expect("durable");
            store.shutdown().await.expect("shutdown");
            alerts[0].id
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
        let due = store.due_outbox(at(5), 10).expect("due");
        assert_eq!(due.iter().map(|a| a.id).collect::<Vec<_>>(), [ids]);
        assert_eq!(store.next_outbox_due().expect("next"), Some(at(5)));
        store.remove_outbox(ids).expect("remove");
        assert_eq!(store.next_outbox_due().expect("next"), None);
    }

    #[tokio::test]
    async fn listing_filters_and_pages_newest_first_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open_store(&dir);
        for (n, account) in ["acc_a", "acc_b", "acc_a", "acc_c"].iter().enumerate() {
            let kind = if n % 2 == 0 {
                IncidentKind::Quarantined
            } else {
                IncidentKind::PendingExpiration
            };
            // acc_a gets Quarantined twice: the second is a refresh, not a new one.
            store
                .open_incident(&open(account, kind, n as u32, false))
                .expect("open");
        }
        store
            .resolve_incident(
                &AccountId("acc_b".into()),
                IncidentKind::PendingExpiration,
                at(9),
                false,
            )
            .expect("resolve");
        let list = |q: IncidentQuery| store.list_incidents(&q).expect("list");
        let all = list(IncidentQuery {
            limit: 10,
            ..Default::default()
        });
        let accounts: Vec<&str> = all.iter().map(|i| i.account_id.as_str()).collect();
        assert_eq!(accounts, ["acc_c", "acc_b", "acc_a"]);
        let open_only = list(IncidentQuery {
            state: IncidentState::Open,
            limit: 10,
            ..Default::default()
        });
        assert_eq!(open_only.len(), 2);
        assert!(open_only.iter().all(|i| i.is_open()));
        assert!(open_only[0].id > open_only[1].id);
        let resolved = list(IncidentQuery {
            state: IncidentState::Resolved,
            limit: 10,
            ..Default::default()
        });
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].account_id.as_str(), "acc_b");
        let by_kind = list(IncidentQuery {
            kind: Some(IncidentKind::Quarantined),
            account_id: Some(AccountId("acc_a".into())),
            limit: 10,
            ..Default::default()
        });
        assert_eq!(by_kind.len(), 1);
        let page1 = list(IncidentQuery {
            limit: 2,
            ..Default::default()
        });
        let page2 = list(IncidentQuery {
            limit: 2,
            after: page1.last().map(|i| i.id),
            ..Default::default()
        });
        assert_eq!(page1.len() + page2.len(), 3);
        assert!(page2.iter().all(|i| i.id < page1[1].id));
        let since = list(IncidentQuery {
            since: Some(at(1)),
            limit: 10,
            ..Default::default()
        });
        assert_eq!(since.len(), 2, "acc_a was opened at minute 0");

        store.durable().await.expect("durable");
        store.shutdown().await.expect("shutdown");
        drop(store);
        let store = open_store(&dir);
        assert_eq!(
            store
                .list_incidents(&IncidentQuery {
                    limit: 10,
                    ..Default::default()
                })
                .expect("list")
                .len(),
            3
        );
        // The open index survived too: opening again refreshes.
        let again = store
            .open_incident(&open("acc_c", IncidentKind::PendingExpiration, 20, false))
            .expect("open");
        assert_eq!(again.occurrences, 2);
    }
}
