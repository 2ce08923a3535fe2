//! Operations on sled: records with their history, lookup keys (request id, tracking
//! id), the inbox of bank statuses (and the statuses kept for tracking ids no operation
//! has yet), each customer's operations in progress, and per-state counts.
//!
//! Every write is one multi-tree transaction that also moves the operation's entries in
//! the due index (through [`TxDue`], as every other family does), so a record and its
//! timers never disagree. Transactional trees cannot range-scan, so what a transaction
//! must decide on is kept under one key: a customer's open operations are one sorted
//! list (a create reads it and decides, race-free, whether one is open), and the counts
//! are one key per state, updated in the transaction that changes a state.
//!
//! Operation events are rare next to account webhooks, so their ingest is a
//! transaction (dedup, routing and append together), not the careful sequence of plain
//! writes the webhook hot path uses. A status kept for an unknown tracking id is
//! adopted by the commit that records that tracking id; one ingested between that
//! commit's scan and its transaction is adopted right after it, as `link_account` does.

use std::ops::Bound;
use std::time::Duration;

use sled::transaction::{ConflictableTransactionError, Transactional, TransactionalTree};
use sled::{IVec, Tree};

use super::due::TxDue;
use super::inbox::{dedup_expiry, DedupRecord};
use super::keys::{
    self, DEDUP, OPERATIONS, OPERATION_COUNTS, OPERATION_INBOX, OPERATION_KEYS, OPERATION_OPEN,
    OPERATION_UNROUTED,
};
use super::{from_tx, io, tx, SledStore, TxResult};
use crate::domain::incidents::{IncidentSubject, OpenIncident};
use crate::domain::operations::{
    Operation, OperationEvent, OperationId, OperationQuery, OperationState,
};
use crate::store::{
    CreateOutcome, DueKind, IncomingOperationEvent, OperationCommit, OperationIncident,
    OperationIngest, OperationReceipt, OperationStore, StoreError,
};

/// The trees of the operation family, opened with the store.
pub(super) struct OperationTrees {
    /// [`OPERATIONS`]: records by id.
    records: Tree,
    /// [`OPERATION_KEYS`]: request and tracking ids to operation ids.
    keys: Tree,
    /// [`OPERATION_INBOX`]: pending events by (operation, seq).
    inbox: Tree,
    /// [`OPERATION_UNROUTED`]: events kept by (tracking id, seq).
    unrouted: Tree,
    /// [`OPERATION_OPEN`]: customer to its open operations.
    open: Tree,
    /// [`OPERATION_COUNTS`]: state to how many are in it.
    counts: Tree,
}

impl OperationTrees {
    /// Opens (or creates) the family's trees in `db`.
    pub(super) fn open(db: &sled::Db) -> Result<OperationTrees, StoreError> {
        let tree = |name: &str| db.open_tree(name).map_err(io);
        Ok(OperationTrees {
            records: tree(OPERATIONS)?,
            keys: tree(OPERATION_KEYS)?,
            inbox: tree(OPERATION_INBOX)?,
            unrouted: tree(OPERATION_UNROUTED)?,
            open: tree(OPERATION_OPEN)?,
            counts: tree(OPERATION_COUNTS)?,
        })
    }
}

/// Aborts the transaction with `error`.
fn abort<T>(error: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(error))
}

/// Where the operation's due entries belong: (kind, millis), `None` removes the entry.
fn due_plan(operation: &Operation) -> [(DueKind, Option<u64>); 3] {
    [
        (DueKind::OperationWake, operation.wake_at()),
        (DueKind::OperationDeadline, operation.deadline_at()),
        (DueKind::OperationFailed, operation.failed_at()),
    ]
    .map(|(kind, at)| (kind, at.map(keys::due_millis)))
}

/// Puts or removes the operation's due entries as `plan` says.
fn write_due(due: TxDue<'_>, id: &OperationId, plan: &[(DueKind, Option<u64>)]) -> TxResult<()> {
    for (kind, millis) in plan {
        match millis {
            Some(millis) => due.put(*kind, id.as_str(), *millis, &[])?,
            None => {
                due.remove(*kind, id.as_str())?;
            }
        }
    }
    Ok(())
}

/// The customer's open operations, sorted (oldest first).
fn read_open(open: &TransactionalTree, customer_key: &[u8]) -> TxResult<Vec<OperationId>> {
    match open.get(customer_key)? {
        Some(bytes) => tx(keys::decode(OPERATION_OPEN, &bytes)),
        None => Ok(Vec::new()),
    }
}

/// Writes the customer's open operations (an empty list removes the key).
fn write_open(open: &TransactionalTree, customer_key: &[u8], ids: &[OperationId]) -> TxResult<()> {
    if ids.is_empty() {
        open.remove(customer_key)?;
    } else {
        open.insert(customer_key, tx(keys::encode(OPERATION_OPEN, &ids))?)?;
    }
    Ok(())
}

fn count_of(bytes: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt {
            tree: OPERATION_COUNTS,
            detail: format!("count of {} bytes", bytes.len()),
        })
}

/// Adds one to (`up`) or takes one from the count of `state`.
fn bump(counts: &TransactionalTree, state: OperationState, up: bool) -> TxResult<()> {
    let key = state.as_str().as_bytes();
    let current = match counts.get(key)? {
        Some(bytes) => tx(count_of(&bytes))?,
        None => 0,
    };
    let next = if up {
        current.saturating_add(1)
    } else {
        current.saturating_sub(1)
    };
    if next == 0 {
        counts.remove(key)?;
    } else {
        counts.insert(key, &next.to_be_bytes())?;
    }
    Ok(())
}

/// The operation id an `operation_keys` entry holds.
fn holder_of(lookup: &TransactionalTree, key: &[u8]) -> TxResult<Option<OperationId>> {
    match lookup.get(key)? {
        Some(bytes) => Ok(Some(tx(keys::decode(OPERATION_KEYS, &bytes))?)),
        None => Ok(None),
    }
}

/// Moves the events kept under `found` (keys of `operation_unrouted`) into `id`'s
/// inbox; how many moved (keys already gone are skipped).
fn adopt(
    unrouted: &TransactionalTree,
    inbox: &TransactionalTree,
    found: &[IVec],
    id: &OperationId,
) -> TxResult<u64> {
    let mut moved = 0;
    for key in found {
        let Some(value) = unrouted.remove(key)? else {
            continue;
        };
        let event: OperationEvent = tx(keys::decode(OPERATION_UNROUTED, &value))?;
        inbox.insert(keys::operation_inbox_key(id, event.seq), value)?;
        moved += 1;
    }
    Ok(moved)
}

/// Opens and resolves the incidents `commit` carries (with their alerts), about its
/// operation and at its `updated_at`, inside the commit's transaction: the incident
/// trees, the outbox and the due index are already part of it.
fn write_operation_incidents(
    incidents: &TransactionalTree,
    incident_open: &TransactionalTree,
    outbox: &TransactionalTree,
    due: TxDue<'_>,
    commit: &OperationCommit,
) -> TxResult<()> {
    let op = &commit.operation;
    let subject = IncidentSubject::Operation(op.id.clone());
    for change in &commit.incidents {
        let due = TxDue {
            entries: due.entries,
            subjects: due.subjects,
        };
        match change {
            OperationIncident::Open {
                kind,
                details,
                notify,
            } => {
                let open = OpenIncident {
                    subject: subject.clone(),
                    kind: *kind,
                    details: details.clone(),
                    at: op.updated_at,
                    notify: *notify,
                };
                super::incidents::open_in(incidents, incident_open, outbox, due, &open)?;
            }
            OperationIncident::Resolve { kind, notify } => {
                super::incidents::resolve_in(
                    incidents,
                    incident_open,
                    outbox,
                    due,
                    &subject,
                    *kind,
                    op.updated_at,
                    *notify,
                )?;
            }
        }
    }
    Ok(())
}

impl SledStore {
    /// Decodes an operation record.
    fn decode_operation(bytes: &[u8]) -> Result<Operation, StoreError> {
        keys::decode(OPERATIONS, bytes)
    }

    /// Moves events kept for `tracking_id` into `id`'s inbox, in a transaction of
    /// their own: those an ingest appended between a commit's scan and its transaction.
    fn adopt_stragglers(&self, tracking_id: &str, id: &OperationId) -> Result<u64, StoreError> {
        let t = &self.operations;
        let found = Self::scan_keys(&t.unrouted, &keys::operation_unrouted_prefix(tracking_id))?;
        if found.is_empty() {
            return Ok(0);
        }
        (&t.unrouted, &t.inbox)
            .transaction(|(unrouted, inbox)| adopt(unrouted, inbox, &found, id))
            .map_err(from_tx)
    }
}

impl OperationStore for SledStore {
    fn create_operation(
        &self,
        operation: &Operation,
        force: bool,
    ) -> Result<CreateOutcome, StoreError> {
        let _gate = self.write_gate()?;
        let mut record = operation.clone();
        record.version = 1;
        let id = &record.id;
        let record_key = keys::operation_key(id);
        let record_bytes = keys::encode(OPERATIONS, &record)?;
        let id_value = keys::encode(OPERATION_KEYS, id)?;
        let mut claimed = vec![keys::operation_request_key(&record.request_id)];
        claimed.extend(
            record
                .tracking_id
                .as_deref()
                .map(keys::operation_tracking_key),
        );
        let customer_key = keys::operation_customer_key(&record.details.customer_id);
        let plan = due_plan(&record);
        let t = &self.operations;

        let outcome = (
            &t.records,
            &t.keys,
            &t.open,
            &t.counts,
            &self.due,
            &self.due_subjects,
        )
            .transaction(|(records, lookup, open, counts, entries, subjects)| {
                // The same anchor again (a create retried after an unanswered call):
                // it exists, nothing to write.
                if let Some(bytes) = records.get(&record_key)? {
                    return Ok(CreateOutcome::Existing(tx(Self::decode_operation(&bytes))?));
                }
                let mut open_ids = read_open(open, &customer_key)?;
                if !force {
                    for newest in open_ids.iter().rev() {
                        if let Some(bytes) = records.get(keys::operation_key(newest))? {
                            let existing = tx(Self::decode_operation(&bytes))?;
                            return Ok(CreateOutcome::Existing(existing));
                        }
                    }
                }
                for key in &claimed {
                    if let Some(holder) = holder_of(lookup, key)? {
                        return abort(StoreError::InvalidState(format!(
                            "operation {id}: its request or tracking id already belongs to \
                             operation {holder}"
                        )));
                    }
                }
                records.insert(record_key.as_slice(), record_bytes.as_slice())?;
                for key in &claimed {
                    lookup.insert(key.as_slice(), id_value.as_slice())?;
                }
                write_due(TxDue { entries, subjects }, id, &plan)?;
                if record.state.is_open() {
                    open_ids.push(id.clone());
                    open_ids.sort();
                    write_open(open, &customer_key, &open_ids)?;
                }
                bump(counts, record.state, true)?;
                Ok(CreateOutcome::Created(record.clone()))
            })
            .map_err(from_tx)?;
        if let CreateOutcome::Created(created) = &outcome {
            tracing::debug!(operation_id = %created.id, "operation created");
        }
        Ok(outcome)
    }

    fn get_operation(&self, id: &OperationId) -> Result<Option<Operation>, StoreError> {
        self.operations
            .records
            .get(keys::operation_key(id))
            .map_err(io)?
            .map(|bytes| Self::decode_operation(&bytes))
            .transpose()
    }

    fn find_operation(&self, key: &str) -> Result<Option<OperationId>, StoreError> {
        let t = &self.operations;
        if OperationId::looks_canonical(key)
            && t.records.contains_key(key.as_bytes()).map_err(io)?
        {
            return Ok(Some(OperationId(key.to_owned())));
        }
        for lookup in [
            keys::operation_request_key(key),
            keys::operation_tracking_key(key),
        ] {
            if let Some(bytes) = t.keys.get(lookup).map_err(io)? {
                return Ok(Some(keys::decode(OPERATION_KEYS, &bytes)?));
            }
        }
        Ok(None)
    }

    fn list_operations(&self, query: &OperationQuery) -> Result<Vec<Operation>, StoreError> {
        let mut out = Vec::new();
        if query.limit == 0 {
            return Ok(out);
        }
        let upper = match &query.after {
            Some(after) => Bound::Excluded(keys::operation_key(after)),
            None => Bound::Unbounded,
        };
        // Newest first, filtered while scanning: the tree holds every operation ever
        // created, and a filtered page reads back until it has `limit` matches.
        for item in self
            .operations
            .records
            .range::<Vec<u8>, _>((Bound::Unbounded, upper))
            .rev()
        {
            let (_, bytes) = item.map_err(io)?;
            let operation = Self::decode_operation(&bytes)?;
            if query.matches(&operation) {
                out.push(operation);
                if out.len() >= query.limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn count_operations(&self) -> Result<Vec<(OperationState, u64)>, StoreError> {
        let mut counts = Vec::new();
        for state in OperationState::ALL {
            let Some(bytes) = self
                .operations
                .counts
                .get(state.as_str().as_bytes())
                .map_err(io)?
            else {
                continue;
            };
            let n = count_of(&bytes)?;
            if n > 0 {
                counts.push((state, n));
            }
        }
        Ok(counts)
    }

    fn ingest_operation_event(
        &self,
        event: &IncomingOperationEvent,
        dedup_ttl: Duration,
    ) -> Result<OperationIngest, StoreError> {
        let _gate = self.write_gate()?;
        let dedup_bytes = keys::encode(
            DEDUP,
            &DedupRecord {
                expires_at: dedup_expiry(event.received_at, dedup_ttl),
                seq: None,
            },
        )?;
        let routes = [
            keys::operation_tracking_key(&event.tracking_id),
            keys::operation_request_key(&event.request_id),
        ];
        let t = &self.operations;
        (&self.dedup, &t.keys, &t.inbox, &t.unrouted)
            .transaction(|(dedup, lookup, inbox, unrouted)| {
                let mut operation_id = None;
                for key in &routes {
                    if let Some(id) = holder_of(lookup, key)? {
                        operation_id = Some(id);
                        break;
                    }
                }
                if let Some(bytes) = dedup.get(event.dedup_key)? {
                    let seen: DedupRecord = tx(keys::decode(DEDUP, &bytes))?;
                    if seen.expires_at > event.received_at {
                        return Ok(OperationIngest::Duplicate { operation_id });
                    }
                }
                // The id generator the webhook inbox draws from: one sequence for both.
                let seq = inbox.generate_id()?;
                let stored = OperationEvent {
                    seq,
                    event_id: event.event_id.clone(),
                    tracking_id: event.tracking_id.clone(),
                    request_id: event.request_id.clone(),
                    report: event.report.clone(),
                    source: event.source,
                    received_at: event.received_at,
                };
                match &operation_id {
                    Some(id) => inbox.insert(
                        keys::operation_inbox_key(id, seq),
                        tx(keys::encode(OPERATION_INBOX, &stored))?,
                    )?,
                    None => unrouted.insert(
                        keys::operation_unrouted_key(&event.tracking_id, seq),
                        tx(keys::encode(OPERATION_UNROUTED, &stored))?,
                    )?,
                };
                dedup.insert(&event.dedup_key[..], dedup_bytes.as_slice())?;
                Ok(OperationIngest::Accepted { seq, operation_id })
            })
            .map_err(from_tx)
    }

    fn pending_operation_events(
        &self,
        id: &OperationId,
    ) -> Result<Vec<OperationEvent>, StoreError> {
        self.operations
            .inbox
            .scan_prefix(keys::operation_inbox_prefix(id))
            .values()
            .map(|bytes| keys::decode(OPERATION_INBOX, &bytes.map_err(io)?))
            .collect()
    }

    fn operations_with_pending_events(&self) -> Result<Vec<OperationId>, StoreError> {
        // One key per operation: after each hit, jump past that operation's prefix.
        let mut ids = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        loop {
            let Some(entry) = self.operations.inbox.range(from.clone()..).next() else {
                return Ok(ids);
            };
            let (key, _) = entry.map_err(io)?;
            let id =
                keys::operation_inbox_key_operation(&key).ok_or_else(|| StoreError::Corrupt {
                    tree: OPERATION_INBOX,
                    detail: "operation inbox key without an operation prefix".to_string(),
                })?;
            let next = keys::prefix_end(&keys::operation_inbox_prefix(&id));
            ids.push(id);
            match next {
                Some(end) => from = end,
                None => return Ok(ids),
            }
        }
    }

    fn unrouted_operation_events(&self, limit: usize) -> Result<Vec<OperationEvent>, StoreError> {
        // Keyed by tracking id (what adoption reads), so oldest-first is a sort of the
        // whole tree: statuses for tracking ids nobody has are few, and an operator's read.
        let mut events = self
            .operations
            .unrouted
            .iter()
            .values()
            .map(|bytes| keys::decode::<OperationEvent>(OPERATION_UNROUTED, &bytes.map_err(io)?))
            .collect::<Result<Vec<_>, _>>()?;
        events.sort_by_key(|event| event.seq);
        events.truncate(limit);
        Ok(events)
    }

    fn commit_operation(&self, commit: &OperationCommit) -> Result<OperationReceipt, StoreError> {
        let _gate = self.write_gate()?;
        let read_version = commit.operation.version;
        let mut record = commit.operation.clone();
        record.version = read_version.saturating_add(1);
        let record = record;
        let id = &record.id;
        let record_key = keys::operation_key(id);
        let record_bytes = keys::encode(OPERATIONS, &record)?;
        let id_value = keys::encode(OPERATION_KEYS, id)?;
        let plan = due_plan(&record);
        let customer_key = keys::operation_customer_key(&record.details.customer_id);
        // Scanned before the transaction (which cannot scan); adopted only if this commit
        // is the one that records the tracking id.
        let kept = match &record.tracking_id {
            Some(tracking_id) => Self::scan_keys(
                &self.operations.unrouted,
                &keys::operation_unrouted_prefix(tracking_id),
            )?,
            None => Vec::new(),
        };
        let consumed: Vec<Vec<u8>> = commit
            .consumed
            .iter()
            .map(|seq| keys::operation_inbox_key(id, *seq))
            .collect();
        let t = &self.operations;

        let (adopted, newly_tracked) = (
            &t.records,
            &t.keys,
            &t.inbox,
            &t.unrouted,
            &t.open,
            &t.counts,
            &self.due,
            &self.due_subjects,
            &self.incidents,
            &self.incident_open,
            &self.outbox,
        )
            .transaction(
                |(
                    records,
                    lookup,
                    inbox,
                    unrouted,
                    open,
                    counts,
                    entries,
                    subjects,
                    incidents,
                    incident_open,
                    outbox,
                )| {
                    let Some(bytes) = records.get(&record_key)? else {
                        return abort(StoreError::OperationNotFound(id.clone()));
                    };
                    let stored = tx(Self::decode_operation(&bytes))?;
                    if stored.version != read_version {
                        return abort(StoreError::VersionConflict {
                            record: "operation",
                            id: id.to_string(),
                            read: read_version,
                            stored: stored.version,
                        });
                    }
                    records.insert(record_key.as_slice(), record_bytes.as_slice())?;

                    let newly_tracked = record
                        .tracking_id
                        .as_ref()
                        .filter(|tracking_id| stored.tracking_id.as_ref() != Some(*tracking_id));
                    let mut adopted = 0;
                    if let Some(tracking_id) = newly_tracked {
                        let key = keys::operation_tracking_key(tracking_id);
                        match holder_of(lookup, &key)? {
                            Some(holder) if &holder != id => {
                                return abort(StoreError::InvalidState(format!(
                                    "tracking id {tracking_id} already belongs to operation \
                                     {holder}"
                                )));
                            }
                            _ => {}
                        }
                        lookup.insert(key, id_value.as_slice())?;
                        adopted = adopt(unrouted, inbox, &kept, id)?;
                    }

                    let due = TxDue { entries, subjects };
                    write_due(due, id, &plan)?;

                    let same_customer = stored.details.customer_id == record.details.customer_id;
                    if !(same_customer && stored.state.is_open() && record.state.is_open()) {
                        let stored_key = keys::operation_customer_key(&stored.details.customer_id);
                        let mut ids = read_open(open, &stored_key)?;
                        ids.retain(|open_id| open_id != id);
                        write_open(open, &stored_key, &ids)?;
                        if record.state.is_open() {
                            let mut ids = read_open(open, &customer_key)?;
                            ids.push(id.clone());
                            ids.sort();
                            ids.dedup();
                            write_open(open, &customer_key, &ids)?;
                        }
                    }
                    if stored.state != record.state {
                        bump(counts, stored.state, false)?;
                        bump(counts, record.state, true)?;
                    }
                    for key in &consumed {
                        inbox.remove(key.as_slice())?;
                    }
                    write_operation_incidents(incidents, incident_open, outbox, due, commit)?;
                    Ok((adopted, newly_tracked.cloned()))
                },
            )
            .map_err(from_tx)?;

        // An ingest that committed between the scan and the transaction left its event
        // kept; none can be kept for this tracking id any more (it resolves now).
        let late = match &newly_tracked {
            Some(tracking_id) => self.adopt_stragglers(tracking_id, id)?,
            None => 0,
        };
        tracing::debug!(
            operation_id = %id,
            state = %record.state,
            version = record.version,
            adopted = adopted + late,
            "operation committed"
        );
        Ok(OperationReceipt {
            operation: record,
            adopted: adopted + late,
        })
    }
}
