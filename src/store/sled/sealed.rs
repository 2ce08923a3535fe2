//! Secrets inside records: which fields of which trees hold secrets, sealing them on
//! the way in and opening them on the way out, and what the store does about them at
//! open (refuse unknown keys, seal what an older version left plain) and on rotation.
//!
//! A secret field is written `{"sealed": "v1:<key id>:…"}` in place of its plain
//! string (see [`crate::secrets`]), bound to its tree, record key and field: a sealed
//! value copied into another record does not open. Callers above the store see the
//! plain, secrecy-wrapped value; only these bytes are sealed. A new kind of secret (an
//! API key, a webhook secret) is one more entry in [`SEALED_FIELDS`].
//!
//! The `secrets` tree remembers the ids of every key that may have sealed a value here
//! (`key_ids`): checking them at open costs one read however large the store, and
//! `rotate-key` narrows the list to the current key once every value is re-sealed, so
//! the old keys can go.

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use sled::Tree;

use super::io;
use super::keys::{self, ACCOUNTS};
use crate::secrets::{key_id_of, Keyring, SecretsError};
use crate::store::StoreError;

/// The tree holding `key_ids` and the migration marker.
pub(super) const SECRETS: &str = "secrets";
/// In `secrets`: JSON list of the key ids values in the store may be sealed with.
const KEY_IDS: &[u8] = b"key_ids";
/// In `secrets`: written once every plain secret of an older version was sealed.
const PLAIN_SEALED: &[u8] = b"plain_sealed";

/// Trees whose records hold secrets, and the JSON pointers of those fields.
pub(super) const SEALED_FIELDS: &[(&str, &[&str])] = &[(ACCOUNTS, &["/access_token"])];

/// The object key a sealed field is wrapped in (a plain one is a bare string).
const SEALED: &str = "sealed";

fn fields_of(tree: &str) -> &'static [&'static str] {
    SEALED_FIELDS
        .iter()
        .find(|(name, _)| *name == tree)
        .map_or(&[], |(_, fields)| fields)
}

/// What binds a sealed field to its place: tree, record key and field, NUL-separated.
fn aad(tree: &str, key: &[u8], field: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(tree.len() + key.len() + field.len() + 2);
    aad.extend_from_slice(tree.as_bytes());
    aad.push(0);
    aad.extend_from_slice(key);
    aad.push(0);
    aad.extend_from_slice(field.as_bytes());
    aad
}

fn corrupt(tree: &'static str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        tree,
        detail: detail.to_string(),
    }
}

/// The sealed text of a field, if it is in the sealed form.
fn sealed_text(slot: &Value) -> Option<&str> {
    slot.as_object()?.get(SEALED)?.as_str()
}

/// A sealed field as stored: `{"sealed": "<sealed text>"}`.
fn sealed_value(sealed: String) -> Value {
    let mut object = serde_json::Map::new();
    object.insert(SEALED.to_owned(), Value::String(sealed));
    Value::Object(object)
}

/// Seals and opens the secret fields of records with one keyring.
#[derive(Clone, Debug)]
pub(super) struct Sealer {
    keyring: Keyring,
}

impl Sealer {
    pub(super) fn new(keyring: Keyring) -> Sealer {
        Sealer { keyring }
    }

    /// The id of the key new values are sealed with.
    pub(super) fn current_key_id(&self) -> &str {
        self.keyring.current_id()
    }

    /// Encodes a record of `tree` stored at `key` (see [`keys::encode`]), its secret
    /// fields sealed with the current key.
    pub(super) fn encode<T: Serialize>(
        &self,
        tree: &'static str,
        key: &[u8],
        value: &T,
    ) -> Result<Vec<u8>, StoreError> {
        let mut json = serde_json::to_value(value)
            .map_err(|e| corrupt(tree, format!("cannot encode record: {e}")))?;
        for field in fields_of(tree) {
            if let Some(slot) = json.pointer_mut(field) {
                if let Value::String(plain) = slot {
                    let sealed = self.keyring.seal(plain.as_bytes(), &aad(tree, key, field));
                    *slot = sealed_value(sealed);
                }
            }
        }
        keys::encode(tree, &json)
    }

    /// Decodes a record written by [`Sealer::encode`] (or, before the migration at open
    /// has run, by an older version with plain secrets), its secret fields opened.
    pub(super) fn decode<T: DeserializeOwned>(
        &self,
        tree: &'static str,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        let mut json: Value = keys::decode(tree, bytes)?;
        for field in fields_of(tree) {
            let Some(slot) = json.pointer_mut(field) else {
                continue;
            };
            let Some(sealed) = sealed_text(slot) else {
                continue;
            };
            let plain = self.keyring.open(sealed, &aad(tree, key, field))?;
            let plain = String::from_utf8(plain.to_vec())
                .map_err(|_| corrupt(tree, format!("sealed {field} is not UTF-8")))?;
            *slot = Value::String(plain);
        }
        serde_json::from_value(json).map_err(|e| corrupt(tree, format!("bad record body: {e}")))
    }

    /// Re-seals the secret fields of one record's bytes that are plain, or (with
    /// `rotate`) sealed with another key than the current one. `None`: nothing to do.
    fn reseal(
        &self,
        tree: &'static str,
        key: &[u8],
        bytes: &[u8],
        rotate: bool,
    ) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        let mut json: Value = keys::decode(tree, bytes)?;
        let mut resealed = 0;
        for field in fields_of(tree) {
            let Some(slot) = json.pointer_mut(field) else {
                continue;
            };
            let aad = aad(tree, key, field);
            let sealed = match slot {
                Value::String(plain) => self.keyring.seal(plain.as_bytes(), &aad),
                _ => match sealed_text(slot) {
                    Some(sealed) => {
                        let Some(id) = key_id_of(sealed) else {
                            return Err(corrupt(tree, format!("sealed {field} has no key id")));
                        };
                        if !self.keyring.has(id) {
                            return Err(SecretsError::UnknownKeyId(id.to_owned()).into());
                        }
                        if !rotate || id == self.keyring.current_id() {
                            continue;
                        }
                        let plain = self.keyring.open(sealed, &aad)?;
                        self.keyring.seal(&plain, &aad)
                    }
                    None => continue,
                },
            };
            *slot = sealed_value(sealed);
            resealed += 1;
        }
        if resealed == 0 {
            return Ok(None);
        }
        Ok(Some((keys::encode(tree, &json)?, resealed)))
    }

    /// Re-seals (see [`Sealer::reseal`]) every record of `tree`; returns how many fields.
    /// Each record is swapped only if unchanged since it was read, so a concurrent
    /// writer (which seals with the current key itself) is never overwritten.
    fn reseal_tree(
        &self,
        name: &'static str,
        tree: &Tree,
        rotate: bool,
    ) -> Result<u64, StoreError> {
        let mut count = 0;
        for item in tree.iter() {
            let (key, mut bytes) = item.map_err(io)?;
            while let Some((new, n)) = self.reseal(name, &key, &bytes, rotate)? {
                match tree
                    .compare_and_swap(&key, Some(&bytes), Some(new))
                    .map_err(io)?
                {
                    Ok(()) => {
                        count += n;
                        break;
                    }
                    Err(changed) => match changed.current {
                        Some(current) => bytes = current,
                        None => break,
                    },
                }
            }
        }
        Ok(count)
    }
}

/// The key ids the store's values may be sealed with.
fn key_ids(secrets: &Tree) -> Result<Vec<String>, StoreError> {
    match secrets.get(KEY_IDS).map_err(io)? {
        Some(bytes) => keys::decode(SECRETS, &bytes),
        None => Ok(Vec::new()),
    }
}

fn set_key_ids(secrets: &Tree, ids: &[String]) -> Result<(), StoreError> {
    secrets
        .insert(KEY_IDS, keys::encode(SECRETS, &ids)?)
        .map_err(io)?;
    Ok(())
}

/// At open, before any writer: refuses a keyring that lacks a key the store's values
/// may be sealed with, records the current key's id (durably, before it seals
/// anything), and seals the plain secrets an older version left, once.
pub(super) fn prepare(
    db: &sled::Db,
    secrets: &Tree,
    trees: &[(&'static str, &Tree)],
    sealer: &Sealer,
) -> Result<(), StoreError> {
    let mut ids = key_ids(secrets)?;
    if let Some(missing) = ids.iter().find(|id| !sealer.keyring.has(id)) {
        return Err(SecretsError::UnknownKeyId(missing.clone()).into());
    }
    let current = sealer.keyring.current_id().to_owned();
    if !ids.contains(&current) {
        ids.push(current);
        set_key_ids(secrets, &ids)?;
        db.flush().map_err(io)?;
    }
    if secrets.contains_key(PLAIN_SEALED).map_err(io)? {
        return Ok(());
    }
    let mut sealed = 0;
    for (name, tree) in trees {
        sealed += sealer.reseal_tree(name, tree, false)?;
    }
    // The sealed values are on disk before the marker says there is nothing plain left;
    // a crash before it seals the rest at the next open (sealed ones are skipped).
    db.flush().map_err(io)?;
    secrets.insert(PLAIN_SEALED, &[]).map_err(io)?;
    if sealed > 0 {
        tracing::info!(sealed, "plain secrets of an older version sealed");
    }
    Ok(())
}

/// Re-seals every secret not sealed with the current key; returns how many. Once the
/// result is durable (`flush`), the store needs only the current key.
pub(super) fn rotate(
    secrets: &Tree,
    trees: &[(&'static str, &Tree)],
    sealer: &Sealer,
    flush: impl Fn() -> Result<(), StoreError>,
) -> Result<u64, StoreError> {
    let mut resealed = 0;
    for (name, tree) in trees {
        resealed += sealer.reseal_tree(name, tree, true)?;
    }
    flush()?;
    set_key_ids(secrets, &[sealer.keyring.current_id().to_owned()])?;
    flush()?;
    Ok(resealed)
}

#[cfg(test)]
#[path = "sealed_tests.rs"]
mod tests;
