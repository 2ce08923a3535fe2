//! Which keys seal the store's secrets, decided once at start, and the offline
//! `acctor rotate-key` command.
//!
//! Configured keys (`secrets.key` with `secrets.old_keys`, or `secrets.key_file`) always
//! win. Without any, the embedded demo (no Plaid URL: nothing real to protect) uses a
//! key generated into `<data_dir>/secrets.key`; a start against a real provider refuses,
//! because a key kept beside the data does not protect that data at rest, and starting
//! "encrypted" that way would only look safe.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;

use super::backend::{open_sled, OpenedStore};
use crate::config::Settings;
use crate::config::StoreBackend;
use crate::secrets::key_file::{self, KeyFileSource};
use crate::secrets::Keyring;

/// Where the keys in effect came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `secrets.key` (and `secrets.old_keys`).
    Config,
    /// `secrets.key_file`.
    KeyFile(PathBuf),
    /// The embedded demo's key, generated now into this file.
    DemoGenerated(PathBuf),
    /// The embedded demo's key, generated at an earlier start into this file.
    DemoFile(PathBuf),
}

impl KeySource {
    /// The demo key's file, when the keys are the demo's (kept beside the data).
    pub fn demo_key_file(&self) -> Option<&std::path::Path> {
        match self {
            KeySource::DemoGenerated(path) | KeySource::DemoFile(path) => Some(path),
            KeySource::Config | KeySource::KeyFile(_) => None,
        }
    }
}

/// The keyring configured in `settings`, or the embedded demo's (generated at its
/// first start); an error when no key is configured and a real provider is.
pub fn resolve_keyring(settings: &Settings) -> anyhow::Result<(Keyring, KeySource)> {
    let secrets = &settings.secrets;
    if let Some(key) = &secrets.key {
        let specs: Vec<&str> = std::iter::once(key)
            .chain(&secrets.old_keys)
            .map(|k| k.expose_secret())
            .collect();
        let keyring = Keyring::from_specs(&specs).context("secrets.key")?;
        return Ok((keyring, KeySource::Config));
    }
    if let Some(path) = &secrets.key_file {
        let keyring = key_file::read(path).context("secrets.key_file")?;
        return Ok((keyring, KeySource::KeyFile(path.clone())));
    }
    let demo = settings.plaid.base_url.is_empty() && settings.sandbox.embedded;
    if !demo {
        anyhow::bail!(
            "no key for secrets at rest: set secrets.key (ACCTOR__SECRETS__KEY=<key id>:<base64 of 32 bytes>) \
             or secrets.key_file; a key is generated into the data dir only for the embedded demo, \
             since a key kept beside the data does not protect it"
        );
    }
    let (keyring, source) = key_file::load_or_generate(&settings.store.data_dir)
        .context("setting up the demo key for secrets at rest")?;
    Ok(match source {
        KeyFileSource::Generated(path) => {
            tracing::warn!(
                path = %path.display(),
                key_id = keyring.current_id(),
                "generated a key for secrets at rest beside the data, for the embedded demo only; production configures secrets.key or secrets.key_file"
            );
            (keyring, KeySource::DemoGenerated(path))
        }
        KeyFileSource::Read(path) => (keyring, KeySource::DemoFile(path)),
    })
}

/// `acctor rotate-key`: re-seals every stored secret with the current key, durably;
/// returns how many values it re-sealed (0 when all already were: idempotent).
/// Afterwards the old keys can be removed from the configuration. On sled the service
/// must be stopped (a running one holds the store's lock); on PostgreSQL it may run, as
/// long as its keyring has the new key too (it reads what this re-seals).
pub async fn rotate_key(settings: &Settings) -> anyhow::Result<u64> {
    let store = match settings.store.backend {
        StoreBackend::Sled => {
            let data_dir = settings.store.data_dir.clone();
            if !data_dir.join("db").exists() {
                anyhow::bail!("no store in {}: nothing to rotate", data_dir.display());
            }
            let probe = data_dir.clone();
            let free = tokio::task::spawn_blocking(move || {
                crate::store::wait_until_released(&probe, Duration::ZERO)
            })
            .await
            .context("checking the store's lock")?;
            if !free {
                anyhow::bail!(
                    "the store in {} is in use (is `acctor serve` running?): stop the service, then run rotate-key",
                    data_dir.display()
                );
            }
            let (keyring, _) = resolve_keyring(settings)?;
            OpenedStore::Sled(open_sled(settings, keyring)?)
        }
        StoreBackend::Postgres => {
            let (keyring, _) = resolve_keyring(settings)?;
            OpenedStore::open(settings, keyring).await?
        }
    };
    let rotated = tokio::task::spawn_blocking({
        let store = store.clone();
        move || store.rotate_secrets()
    })
    .await
    .context("re-sealing task")?
    .context("re-sealing the stored secrets");
    store.shutdown().await.context("final flush")?;
    // Free for `acctor serve` once this returns.
    store.release(Duration::from_secs(10)).await;
    let resealed = rotated?;
    tracing::info!(resealed, "rotate-key done");
    Ok(resealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &std::path::Path) -> Settings {
        let mut settings = Settings::defaults();
        settings.store.data_dir = dir.to_path_buf();
        settings
    }

    #[test]
    fn a_real_provider_without_a_key_refuses_and_the_demo_generates_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut production = settings(dir.path());
        production.plaid.base_url = "https://production.plaid.com".into();
        let error = resolve_keyring(&production).unwrap_err().to_string();
        assert!(error.contains("secrets.key"), "{error}");
        assert!(!dir.path().join("secrets.key").exists());

        let demo = settings(dir.path());
        let (generated, source) = resolve_keyring(&demo).unwrap();
        let path = dir.path().join("secrets.key");
        assert_eq!(source, KeySource::DemoGenerated(path.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let (again, source) = resolve_keyring(&demo).unwrap();
        assert_eq!(source, KeySource::DemoFile(path));
        assert_eq!(generated.current_id(), again.current_id());

        // A configured key wins, even for the demo.
        let (spec_ring, spec) = Keyring::generate("k9").unwrap();
        let mut configured = settings(dir.path());
        configured.secrets.key = Some(secrecy::SecretString::from(spec.to_string()));
        let (keyring, source) = resolve_keyring(&configured).unwrap();
        assert_eq!(source, KeySource::Config);
        assert_eq!(keyring.current_id(), spec_ring.current_id());
    }

    #[tokio::test]
    async fn rotate_key_reseals_with_the_new_key_so_the_old_one_can_go() {
        use crate::domain::{AccessToken, Account, ProviderKind};
        use crate::store::AccountStore;
        let dir = tempfile::tempdir().unwrap();
        let (_, k1) = Keyring::generate("k1").unwrap();
        let (_, k2) = Keyring::generate("k2").unwrap();
        let secret = |spec: &str| secrecy::SecretString::from(spec.to_owned());
        let mut settings = settings(dir.path());
        settings.plaid.base_url = "https://production.plaid.com".into();
        settings.secrets.key = Some(secret(&k1));
        let account = Account::new_linked(
            ProviderKind::Plaid,
            "item-1".into(),
            AccessToken::new("access-production-rotated"),
            "owner-1".into(),
            Vec::new(),
            chrono::Utc::now(),
        );
        let (keyring, _) = resolve_keyring(&settings).unwrap();
        let store = open_sled(&settings, keyring).unwrap();
        store.link_account(&account).unwrap();
        store.shutdown().await.unwrap();
        drop(store);
        let released = |dir: PathBuf| async move {
            tokio::task::spawn_blocking(move || {
                crate::store::wait_until_released(&dir, Duration::from_secs(10))
            })
            .await
            .unwrap()
        };
        assert!(released(dir.path().to_path_buf()).await);

        settings.secrets.key = Some(secret(&k2));
        settings.secrets.old_keys = vec![secret(&k1)];
        assert_eq!(rotate_key(&settings).await.unwrap(), 1);
        assert_eq!(rotate_key(&settings).await.unwrap(), 0);

        settings.secrets.old_keys.clear();
        let (keyring, _) = resolve_keyring(&settings).unwrap();
        let store = open_sled(&settings, keyring).unwrap();
        let read = store.get_account(&account.id).unwrap().unwrap();
        assert_eq!(read.access_token.expose(), "access-production-rotated");
        store.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn rotate_key_refuses_a_store_in_use_and_needs_one_to_exist() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let error = rotate_key(&settings).await.unwrap_err().to_string();
        assert!(error.contains("no store"), "{error}");

        let (keyring, _) = resolve_keyring(&settings).unwrap();
        let store = open_sled(&settings, keyring).unwrap();
        let error = rotate_key(&settings).await.unwrap_err().to_string();
        assert!(error.contains("in use"), "{error}");
        store.shutdown().await.unwrap();
        drop(store);
        assert!(tokio::task::spawn_blocking({
            let dir = dir.path().to_path_buf();
            move || crate::store::wait_until_released(&dir, Duration::from_secs(10))
        })
        .await
        .unwrap());
        assert_eq!(rotate_key(&settings).await.unwrap(), 0);
    }
}
