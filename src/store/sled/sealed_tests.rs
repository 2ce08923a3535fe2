//! Secrets at rest in the sled store: what reaches the disk is sealed, bound to its
//! record, needs a configured key, and moves to a new key on rotation; a data dir of
//! the previous version (plain tokens) is sealed at open, nothing lost.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use tempfile::TempDir;

use super::super::keys::{self, ACCOUNTS};
use super::super::test_support::*;
use super::super::{SledStore, SledStoreConfig};
use super::{SEALED_FIELDS, SECRETS};
use crate::domain::{AccessToken, Account};
use crate::secrets::{Keyring, SecretsError};
use crate::store::{AccountStore, Durability, StoreError};

const TOKEN: &str = "access-production-7f3c9a1e-0b44-4d1e-9c2a-sealed-at-rest";

fn keyring(specs: &[(&str, u8)]) -> Keyring {
    let specs: Vec<String> = specs
        .iter()
        .map(|(id, byte)| {
            format!(
                "{id}:{}",
                base64::engine::general_purpose::STANDARD.encode([*byte; 32])
            )
        })
        .collect();
    Keyring::from_specs(&specs).unwrap()
}

fn try_open_with(dir: &TempDir, keyring: Keyring) -> Result<Arc<SledStore>, StoreError> {
    let data_dir = dir.path().join("data");
    assert!(super::super::wait_until_released(
        &data_dir,
        std::time::Duration::from_secs(10)
    ));
    SledStore::open_with_keyring(
        SledStoreConfig {
            data_dir,
            cache_capacity_bytes: 8 * 1024 * 1024,
            group_commit_window: std::time::Duration::ZERO,
        },
        keyring,
    )
}

fn open_with(dir: &TempDir, keyring: Keyring) -> Arc<SledStore> {
    try_open_with(dir, keyring).unwrap()
}

fn account_with_token(item_id: &str) -> Account {
    let mut account = account(item_id, "owner-1", &[]);
    account.access_token = AccessToken::new(TOKEN);
    account
}

/// The raw JSON of an account record, as on disk.
fn raw_record(store: &SledStore, account: &Account) -> serde_json::Value {
    let bytes = store
        .accounts
        .get(keys::account_key(&account.id))
        .unwrap()
        .unwrap();
    keys::decode(ACCOUNTS, &bytes).unwrap()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn no_file_of_the_data_dir_holds_a_token_only_its_sealed_envelope() {
    let dir = TempDir::new().unwrap();
    let account = account_with_token("item-raw");
    let store = open(&dir);
    store.link_account(&account).unwrap();
    store.durable().await.unwrap();

    // The record holds the sealed envelope under the current key, not the token...
    let record = raw_record(&store, &account);
    let sealed = record["access_token"]["sealed"]
        .as_str()
        .unwrap()
        .to_owned();
    let key_id = store.sealer.current_key_id().to_owned();
    assert!(sealed.starts_with(&format!("v1:{key_id}:")), "{sealed}");
    // ...and the store hands the token back in the clear.
    let read = store.get_account(&account.id).unwrap().unwrap();
    assert_eq!(read.access_token.expose(), TOKEN);
    store.shutdown().await.unwrap();
    drop(store);

    let data_dir = dir.path().join("data");
    assert!(super::super::wait_until_released(
        &data_dir,
        std::time::Duration::from_secs(10)
    ));
    let files = files_under(&data_dir);
    assert!(files.len() > 1, "{files:?}");
    let mut envelope_found = false;
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        assert!(
            !contains(&bytes, TOKEN.as_bytes()),
            "{} holds the token in the clear",
            file.display()
        );
        envelope_found |= contains(&bytes, sealed.as_bytes());
    }
    // The scan did see the record: its sealed form is on disk.
    assert!(
        envelope_found,
        "the sealed token is in no file of {files:?}"
    );
}

#[tokio::test]
async fn a_sealed_token_moved_to_another_record_does_not_open() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let first = account_with_token("item-1");
    let second = account("item-2", "owner-2", &[]);
    store.link_account(&first).unwrap();
    store.link_account(&second).unwrap();
    // Copy the first record's sealed token into the second record.
    let mut record = raw_record(&store, &second);
    record["access_token"] = raw_record(&store, &first)["access_token"].clone();
    store
        .accounts
        .insert(
            keys::account_key(&second.id),
            keys::encode(ACCOUNTS, &record).unwrap(),
        )
        .unwrap();
    let error = store.get_account(&second.id).unwrap_err();
    assert!(
        matches!(error, StoreError::Secret(SecretsError::Tampered(_))),
        "{error}"
    );
    assert_eq!(
        store
            .get_account(&first.id)
            .unwrap()
            .unwrap()
            .access_token
            .expose(),
        TOKEN
    );
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_store_refuses_to_open_without_the_key_its_secrets_need_and_rotation_retires_it() {
    let dir = TempDir::new().unwrap();
    let account = account_with_token("item-rotate");
    {
        let store = open_with(&dir, keyring(&[("k1", 1)]));
        store.link_account(&account).unwrap();
        store.shutdown().await.unwrap();
    }
    // Only the new key: refused, naming the missing one.
    let error = try_open_with(&dir, keyring(&[("k2", 2)])).unwrap_err();
    assert!(
        matches!(&error, StoreError::Secret(SecretsError::UnknownKeyId(id)) if id == "k1"),
        "{error}"
    );
    assert!(error.to_string().contains("\"k1\""), "{error}");
    // One line: no source that an error chain would print a second time.
    assert!(std::error::Error::source(&error).is_none());

    // The new key sealing, the old one to open: reads work, then rotation re-seals.
    {
        let store = open_with(&dir, keyring(&[("k2", 2), ("k1", 1)]));
        let read = store.get_account(&account.id).unwrap().unwrap();
        assert_eq!(read.access_token.expose(), TOKEN);
        assert_eq!(store.rotate_secrets().unwrap(), 1);
        // Idempotent: nothing left under another key.
        assert_eq!(store.rotate_secrets().unwrap(), 0);
        let record = raw_record(&store, &account);
        assert!(record["access_token"]["sealed"]
            .as_str()
            .unwrap()
            .starts_with("v1:k2:"));
        store.shutdown().await.unwrap();
    }
    // The old key is no longer needed.
    let store = open_with(&dir, keyring(&[("k2", 2)]));
    let read = store.get_account(&account.id).unwrap().unwrap();
    assert_eq!(read.access_token.expose(), TOKEN);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_new_current_key_needs_the_old_one_until_a_rotation() {
    let dir = TempDir::new().unwrap();
    let account = account_with_token("item-writes");
    {
        let store = open_with(&dir, keyring(&[("k1", 1)]));
        store.link_account(&account).unwrap();
        store.shutdown().await.unwrap();
    }
    {
        // Writes after a key change seal with the new key; the old one stays needed
        // (values not written since are still under it) until a rotation.
        let store = open_with(&dir, keyring(&[("k2", 2), ("k1", 1)]));
        store.record_sync_started(&account.id, t0()).unwrap();
        let record = raw_record(&store, &account);
        assert!(record["access_token"]["sealed"]
            .as_str()
            .unwrap()
            .starts_with("v1:k2:"));
        store.shutdown().await.unwrap();
    }
    let error = try_open_with(&dir, keyring(&[("k2", 2)])).unwrap_err();
    assert!(error.to_string().contains("\"k1\""), "{error}");
}

#[tokio::test]
async fn a_data_dir_with_plain_tokens_is_sealed_at_open_and_nothing_is_lost() {
    let dir = TempDir::new().unwrap();
    let account = account_with_token("item-old");
    {
        // The previous version's layout: the record as plain JSON, no `secrets` tree.
        let db = open_raw(&dir.path().join("data"));
        let mut old = account.clone();
        old.status = crate::domain::LinkStatus::Linked;
        db.open_tree(ACCOUNTS)
            .unwrap()
            .insert(
                keys::account_key(&account.id),
                keys::encode(ACCOUNTS, &old).unwrap(),
            )
            .unwrap();
        db.flush().unwrap();
        assert!(!db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == SECRETS.as_bytes()));
    }
    let store = open_with(&dir, keyring(&[("k1", 1)]));
    let record = raw_record(&store, &account);
    assert!(
        record["access_token"]["sealed"]
            .as_str()
            .unwrap()
            .starts_with("v1:k1:"),
        "{record}"
    );
    let read = store.get_account(&account.id).unwrap().unwrap();
    assert_eq!(read.access_token.expose(), TOKEN);
    assert_eq!(read.item_id, account.item_id);
    // The migration ran once: a rotation with the same key finds nothing to do.
    assert_eq!(store.rotate_secrets().unwrap(), 0);
    store.shutdown().await.unwrap();
    drop(store);
    // A second open keeps it sealed and readable.
    let store = open_with(&dir, keyring(&[("k1", 1)]));
    assert_eq!(
        store
            .get_account(&account.id)
            .unwrap()
            .unwrap()
            .access_token
            .expose(),
        TOKEN
    );
    store.shutdown().await.unwrap();
}

#[test]
fn every_tree_with_secret_fields_is_prepared_and_rotated() {
    let names: Vec<&str> = SEALED_FIELDS.iter().map(|(name, _)| *name).collect();
    let db = sled::Config::new().temporary(true).open().unwrap();
    let accounts = db.open_tree(ACCOUNTS).unwrap();
    let covered: Vec<&str> = super::super::sealed_trees(&accounts)
        .iter()
        .map(|(name, _)| *name)
        .collect();
    assert_eq!(names, covered);
}
