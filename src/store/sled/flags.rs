//! Runtime flags: the sled side of reading, setting and listing them with their
//! history.
//!
//! Three trees: `flags` (the current value of each flag, by its path), `flag_history`
//! (each flag's changes by (path, inverted seq): one flag's history is one prefix scan,
//! newest first) and `flag_changes` (every change by inverted seq: the global history,
//! newest first). A set is one multi-tree transaction over the three, so the value and
//! the change that made it are written together or not at all; sled runs such
//! transactions one at a time, so concurrent sets of one flag each see the previous one
//! and their `from`/`to` values chain.

use sled::transaction::Transactional;

use super::keys::{self, FLAGS, FLAG_CHANGES, FLAG_HISTORY};
use super::{from_tx, io, tx, SledStore};
use crate::domain::flags::{Flag, FlagChange, FlagKey};
use crate::store::{FlagStore, StoreError};

impl FlagStore for SledStore {
    fn get_flag(&self, key: &FlagKey) -> Result<Option<Flag>, StoreError> {
        match self.flags.get(keys::flag_key(key)).map_err(io)? {
            Some(bytes) => Ok(Some(keys::decode(FLAGS, &bytes)?)),
            None => Ok(None),
        }
    }

    fn list_flags(&self) -> Result<Vec<Flag>, StoreError> {
        let mut flags = self
            .flags
            .iter()
            .values()
            .map(|bytes| keys::decode::<Flag>(FLAGS, &bytes.map_err(io)?))
            .collect::<Result<Vec<_>, _>>()?;
        // Path order is not quite key order (the name's text against the enum's order).
        flags.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(flags)
    }

    fn set_flag(&self, change: &FlagChange) -> Result<(Flag, FlagChange), StoreError> {
        let _gate = self.write_gate()?;
        let key = keys::flag_key(&change.key);
        (&self.flags, &self.flag_history, &self.flag_changes)
            .transaction(|(flags, history, all)| {
                let stored: Option<Flag> = match flags.get(&key)? {
                    Some(bytes) => Some(tx(keys::decode(FLAGS, &bytes))?),
                    None => None,
                };
                let flag = Flag {
                    key: change.key.clone(),
                    enabled: change.to,
                    updated_at: change.at,
                    updated_by: change.by.clone(),
                    version: stored.as_ref().map_or(0, |f| f.version) + 1,
                };
                let recorded = FlagChange {
                    from: stored.map(|f| f.enabled),
                    ..change.clone()
                };
                let seq = flags.generate_id()?;
                let change_bytes = tx(keys::encode(FLAG_CHANGES, &recorded))?;
                flags.insert(key.as_slice(), tx(keys::encode(FLAGS, &flag))?)?;
                history.insert(
                    keys::flag_history_key(&change.key, seq),
                    change_bytes.as_slice(),
                )?;
                all.insert(&keys::inverted_seq(seq), change_bytes)?;
                Ok((flag, recorded))
            })
            .map_err(from_tx)
    }

    fn flag_history(
        &self,
        key: Option<&FlagKey>,
        limit: usize,
    ) -> Result<Vec<FlagChange>, StoreError> {
        let (entries, tree) = match key {
            Some(key) => (
                self.flag_history
                    .scan_prefix(keys::flag_history_prefix(key)),
                FLAG_HISTORY,
            ),
            None => (self.flag_changes.iter(), FLAG_CHANGES),
        };
        entries
            .values()
            .take(limit)
            .map(|bytes| keys::decode(tree, &bytes.map_err(io)?))
            .collect()
    }
}
