//! Brings a data dir written by an older version to the current layout at open, before
//! any writer: the three hand-made due-time indexes (retries, polling, outbox) move
//! into the one due index, and a store from before the polling index gets an entry
//! for every linked account.
//!
//! Crash-safe by order rather than by one transaction (a large store would hold sled's
//! global lock for its whole length): every step is idempotent (an entry is put at its
//! subject's key, replacing whatever a previous attempt wrote), the marker goes in
//! last and is flushed before the old trees are dropped, so a crash at any point redoes
//! the rest at the next open and never loses the only copy.

use sled::transaction::Transactional;
use sled::Tree;

use super::accounts::retired_keys;
use super::due::{poll_anchor, TxDue};
use super::keys::{self, legacy, ACCOUNTS, DUE_MIGRATED, LOOKUP, RETIRED_MIGRATED};
use super::sealed::Sealer;
use super::{from_tx, io};
use crate::domain::{Account, LinkStatus};
use crate::store::{DueKind, StoreError};

/// The due index's trees as the migration writes them.
pub(super) struct DueTrees<'a> {
    /// `due`.
    pub(super) entries: &'a Tree,
    /// `due_subjects`.
    pub(super) subjects: &'a Tree,
}

impl DueTrees<'_> {
    /// Puts one entry in its own small transaction (forward and reverse together).
    fn put(
        &self,
        kind: DueKind,
        subject: &str,
        millis: u64,
        payload: &[u8],
    ) -> Result<(), StoreError> {
        (self.entries, self.subjects)
            .transaction(|(entries, subjects)| {
                TxDue { entries, subjects }.put(kind, subject, millis, payload)
            })
            .map_err(from_tx)
    }

    /// Whether the subject has a complete entry of `kind` (reverse and forward).
    fn has(&self, kind: DueKind, subject: &str) -> Result<bool, StoreError> {
        let Some(millis) = self
            .subjects
            .get(keys::due_subject_key(kind, subject))
            .map_err(io)?
        else {
            return Ok(false);
        };
        let Ok(millis) = <[u8; 8]>::try_from(millis.as_ref()) else {
            return Ok(false);
        };
        self.entries
            .contains_key(keys::due_key(kind, u64::from_be_bytes(millis), subject))
            .map_err(io)
    }
}

/// Moves the legacy indexes into the due index once, then drops them. The outbox's
/// entries are not copied here: [`super::outbox::rebuild_outbox_due`] rebuilds them from
/// the outbox itself on every open, which covers the old `outbox_due` tree too.
pub(super) fn migrate_legacy_indexes(
    db: &sled::Db,
    accounts: &Tree,
    due: &DueTrees<'_>,
    sealer: &Sealer,
) -> Result<(), StoreError> {
    let names = db.tree_names();
    let present: Vec<&str> = legacy::TREES
        .into_iter()
        .filter(|name| names.iter().any(|n| n.as_ref() == name.as_bytes()))
        .collect();
    let open = |name: &str| -> Result<Option<Tree>, StoreError> {
        if present.contains(&name) {
            db.open_tree(name).map(Some).map_err(io)
        } else {
            Ok(None)
        }
    };
    if !due.subjects.contains_key(DUE_MIGRATED).map_err(io)? {
        let retries = migrate_retries(open(legacy::RETRIES)?, open(legacy::RETRY_INDEX)?, due)?;
        let poll_index = open(legacy::POLL_INDEX)?;
        let polls = migrate_polls(open(legacy::POLL)?, poll_index.as_ref(), due)?;
        let backfilled = match &poll_index {
            Some(index) => index.contains_key(legacy::POLL_BACKFILLED).map_err(io)?,
            None => false,
        };
        let added = if backfilled {
            0
        } else {
            backfill_polls(accounts, due, sealer)?
        };
        due.subjects.insert(DUE_MIGRATED, &[]).map_err(io)?;
        if !present.is_empty() {
            // The old trees are the only other copy: the new one is on disk first.
            db.flush().map_err(io)?;
            tracing::info!(retries, polls, backfilled = added, "due index migrated");
        } else if added > 0 {
            tracing::info!(accounts = added, "polling index backfilled");
        }
    }
    for name in present {
        db.drop_tree(name).map_err(io)?;
    }
    Ok(())
}

/// Copies each retry record the old reverse index points at (the only ones the old
/// version could find by account); returns how many.
fn migrate_retries(
    retries: Option<Tree>,
    retry_index: Option<Tree>,
    due: &DueTrees<'_>,
) -> Result<u64, StoreError> {
    let (Some(retries), Some(retry_index)) = (retries, retry_index) else {
        return Ok(0);
    };
    let mut moved = 0;
    for item in retry_index.iter() {
        let (account, key) = item.map_err(io)?;
        let (Ok(account), Some(millis)) = (std::str::from_utf8(&account), legacy::key_millis(&key))
        else {
            tracing::warn!("unreadable legacy retry index entry: dropped");
            continue;
        };
        if let Some(record) = retries.get(&key).map_err(io)? {
            // Same record encoding: the bytes move as they are.
            due.put(DueKind::Retry, account, millis, &record)?;
            moved += 1;
        }
    }
    Ok(moved)
}

/// Copies the old polling index: entries its reverse index points at become entries;
/// the others (stale) stay stale, so the sweeper repairs them as it did before.
fn migrate_polls(
    poll: Option<Tree>,
    poll_index: Option<&Tree>,
    due: &DueTrees<'_>,
) -> Result<u64, StoreError> {
    let Some(poll) = poll else {
        return Ok(0);
    };
    let mut moved = 0;
    for item in poll.iter() {
        let (key, account) = item.map_err(io)?;
        let (Ok(account), Some(millis)) = (std::str::from_utf8(&account), legacy::key_millis(&key))
        else {
            tracing::warn!("unreadable legacy polling entry: dropped");
            continue;
        };
        let current = match poll_index {
            Some(index) => index.get(account.as_bytes()).map_err(io)?,
            None => None,
        };
        if current.as_deref() == Some(key.as_ref()) {
            due.put(DueKind::Poll, account, millis, &[])?;
        } else {
            due.entries
                .insert(keys::due_key(DueKind::Poll, millis, account), &[])
                .map_err(io)?;
        }
        moved += 1;
    }
    Ok(moved)
}

/// Gives every linked account without a polling entry one at its anchor (a store
/// written before the polling index existed); returns how many it added.
fn backfill_polls(accounts: &Tree, due: &DueTrees<'_>, sealer: &Sealer) -> Result<u64, StoreError> {
    let mut added = 0u64;
    for item in accounts.iter() {
        let (key, bytes) = item.map_err(io)?;
        // Plain (a store of an older version) or sealed, the sealer reads both.
        let account: Account = sealer.decode(ACCOUNTS, &key, &bytes)?;
        if account.status != LinkStatus::Linked || due.has(DueKind::Poll, account.id.as_str())? {
            continue;
        }
        let millis = keys::due_millis(poll_anchor(&account));
        due.put(DueKind::Poll, account.id.as_str(), millis, &[])?;
        added += 1;
    }
    Ok(added)
}

/// Gives every unlinked account its retired lookup keys once (a store written before
/// unlinked accounts kept them could not find one by alias); returns how many accounts.
/// Idempotent: a key is put at its own place, and the marker goes in last.
pub(super) fn retire_unlinked_keys(
    accounts: &Tree,
    lookup: &Tree,
    sealer: &Sealer,
) -> Result<u64, StoreError> {
    if lookup.contains_key(RETIRED_MIGRATED).map_err(io)? {
        return Ok(0);
    }
    let mut retired = 0u64;
    for item in accounts.iter() {
        let (key, bytes) = item.map_err(io)?;
        // Plain (a store of an older version) or sealed, the sealer reads both.
        let account: Account = sealer.decode(ACCOUNTS, &key, &bytes)?;
        if account.status != LinkStatus::Unlinked {
            continue;
        }
        let id_value = keys::encode(LOOKUP, &account.id)?;
        for key in retired_keys(&account) {
            lookup.insert(key, id_value.as_slice()).map_err(io)?;
        }
        retired += 1;
    }
    lookup.insert(RETIRED_MIGRATED, &[]).map_err(io)?;
    if retired > 0 {
        tracing::info!(accounts = retired, "unlinked accounts' keys retired");
    }
    Ok(retired)
}

#[cfg(test)]
#[path = "migrate_tests.rs"]
mod tests;
