//! Helpers of the sled store's own tests (those that look at its trees and files): a
//! fresh store in a temp dir and raw counts. The records they build (times, accounts,
//! webhooks, rows, commits) are the contract suite's builders, re-exported here.

use std::sync::Arc;

use tempfile::TempDir;

use super::keys::{self};
use super::{SledStore, SledStoreConfig};
use crate::domain::AccountId;
use sled::Tree;

pub(super) use crate::store::contract::{
    account, minutes, ms, row, seq_of, sync, t0, webhook, TTL,
};

pub(super) fn open(dir: &TempDir) -> Arc<SledStore> {
    when_released(&dir.path().join("data"), || {
        SledStore::open(SledStoreConfig {
            data_dir: dir.path().join("data"),
            cache_capacity_bytes: 64 * 1024 * 1024,
            group_commit_window: std::time::Duration::ZERO,
        })
    })
}

/// Opens the raw sled database at `path` (to write or damage what a test needs).
pub(crate) fn open_raw(path: &std::path::Path) -> sled::Db {
    when_released(path, || sled::open(path))
}

/// Opens what is in `data_dir` once sled's directory lock there is free: a database
/// dropped a moment ago lets go of it only when sled's last background write for it
/// ends, so a test that reopens the same directory waits for that (bounded, with the
/// same probe the app's release uses) instead of failing now and then on a busy machine.
pub(crate) fn when_released<T, E: std::fmt::Display>(
    data_dir: &std::path::Path,
    open: impl FnOnce() -> Result<T, E>,
) -> T {
    assert!(
        super::wait_until_released(data_dir, std::time::Duration::from_secs(10)),
        "{} still locked after 10 s",
        data_dir.display()
    );
    open().unwrap_or_else(|error| panic!("opening the store: {error}"))
}

pub(super) fn raw_count(tree: &Tree, id: &AccountId) -> usize {
    tree.scan_prefix(keys::account_prefix(id)).count()
}
