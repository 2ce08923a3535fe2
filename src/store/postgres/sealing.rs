//! Access tokens at rest in PostgreSQL: an account's `record` keeps its token sealed
//! (`{"sealed": "v1:<key id>:<base64>"}`, XChaCha20-Poly1305 bound to the table, the
//! account id and the field, as in the sled store), so a dump of the database, a
//! replica or a user's `SELECT` never shows one. `accounts.secret_key_id` names the key
//! each token needs, so opening the store checks the keyring covers them all.

use serde_json::Value;
use sqlx::PgPool;

use super::{corrupt, db_error};
use crate::domain::Account;
use crate::secrets::{Keyring, SecretsError};
use crate::store::StoreError;

const TABLE: &str = "accounts";
const FIELD: &str = "access_token";
const SEALED: &str = "sealed";

/// What binds a sealed token to its place: moved to another account, it does not open.
fn aad(account_id: &str) -> Vec<u8> {
    format!("postgres\0{TABLE}\0{account_id}\0{FIELD}").into_bytes()
}

/// Seals and opens account records' tokens with one keyring.
#[derive(Clone, Debug)]
pub(super) struct TokenSealer {
    keyring: Keyring,
}

impl TokenSealer {
    pub(super) fn new(keyring: Keyring) -> TokenSealer {
        TokenSealer { keyring }
    }

    /// The id of the key new tokens are sealed with.
    pub(super) fn current_key_id(&self) -> &str {
        self.keyring.current_id()
    }

    /// The account as stored: JSON with its token sealed.
    pub(super) fn seal(&self, account: &Account) -> Result<Value, StoreError> {
        let mut json = serde_json::to_value(account)
            .map_err(|e| corrupt(TABLE, format!("cannot encode account: {e}")))?;
        let sealed = self.keyring.seal(
            account.access_token.expose().as_bytes(),
            &aad(account.id.as_str()),
        );
        if let Some(slot) = json.get_mut(FIELD) {
            let mut object = serde_json::Map::new();
            object.insert(SEALED.to_owned(), Value::String(sealed));
            *slot = Value::Object(object);
        }
        Ok(json)
    }

    /// The account from its stored JSON, its token opened.
    pub(super) fn open(&self, mut json: Value) -> Result<Account, StoreError> {
        let id = json
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| corrupt(TABLE, "account record without an id"))?
            .to_owned();
        if let Some(slot) = json.get_mut(FIELD) {
            if let Some(sealed) = slot.get(SEALED).and_then(Value::as_str) {
                let plain = self.keyring.open(sealed, &aad(&id))?;
                let plain = String::from_utf8(plain.to_vec())
                    .map_err(|_| corrupt(TABLE, "sealed access token is not UTF-8"))?;
                *slot = Value::String(plain);
            }
        }
        serde_json::from_value(json).map_err(|e| corrupt(TABLE, format!("bad account record: {e}")))
    }

    /// Refuses a keyring that lacks a key some stored token is sealed with.
    pub(super) async fn check_keys(&self, pool: &PgPool) -> Result<(), StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT secret_key_id FROM accounts WHERE secret_key_id IS NOT NULL",
        )
        .fetch_all(pool)
        .await
        .map_err(db_error)?;
        match ids.into_iter().find(|id| !self.keyring.has(id)) {
            Some(missing) => Err(StoreError::Secret(SecretsError::UnknownKeyId(missing))),
            None => Ok(()),
        }
    }
}

impl super::PgStore {
    /// Re-seals every access token not sealed with the current key (the `acctor
    /// rotate-key` command; idempotent); returns how many it re-sealed. Afterwards the
    /// store needs only the current key.
    pub fn rotate_secrets(&self) -> Result<u64, StoreError> {
        let current = self.sealer.current_key_id().to_owned();
        self.write(async {
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM accounts WHERE secret_key_id IS DISTINCT FROM $1",
            )
            .bind(&current)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
            let mut resealed = 0;
            for id in ids {
                let id = crate::domain::AccountId(id);
                let done = super::transaction!(self, |tx| {
                    async {
                        match self.account_for_update(tx, &id).await? {
                            Some(account) => {
                                self.put_account(tx, &account).await?;
                                Ok(true)
                            }
                            None => Ok(false),
                        }
                    }
                    .await
                })?;
                resealed += u64::from(done);
            }
            tracing::info!(resealed, key_id = %current, "secrets re-sealed with the current key");
            Ok(resealed)
        })
    }
}
