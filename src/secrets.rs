//! Secrets at rest: the keys that seal secret values (provider access tokens today,
//! API keys and webhook secrets next) before the store writes them, and the sealed
//! value's text form.
//!
//! Sealing is XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`): its 192-bit nonces
//! are drawn at random for every value, which is safe for any number of seals under one
//! key. That matters here: an account record is re-sealed on every write (each sync
//! commit), so a 96-bit random nonce (AES-GCM, ChaCha20-Poly1305) would approach its
//! collision bound on a large store within months.
//!
//! A sealed value reads `v1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>`. The key id
//! in clear says which key opens it, so keys rotate: a [`Keyring`] seals with its
//! current key and opens with any of its keys. The caller binds the value to the record
//! it belongs to with associated data (the store passes tree, record key and field), so
//! a sealed value copied into another record does not open. The `v1:<key id>` header is
//! authenticated too.
//!
//! Keys are written `<key id>:<base64 of 32 bytes>`; [`key_file`] reads and generates
//! files of them.

pub mod key_file;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::Zeroizing;

/// Version tag in front of every sealed value; a new format gets a new tag.
const VERSION: &str = "v1";
/// Nonce length of XChaCha20-Poly1305.
const NONCE_LEN: usize = 24;
/// Authentication tag length.
const TAG_LEN: usize = 16;
/// Key length.
pub const KEY_LEN: usize = 32;
/// Longest key id.
const MAX_KEY_ID_LEN: usize = 32;

/// Why a key could not be used or a sealed value could not be opened. Never carries
/// key material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    /// A key is not written `<key id>:<base64 of 32 bytes>`.
    #[error("bad key: {0}")]
    BadKey(String),
    /// Two keys share an id.
    #[error("key id {0:?} is given twice")]
    DuplicateKeyId(String),
    /// No key at all.
    #[error("no key given")]
    NoKey,
    /// A sealed value names a key that is not configured.
    #[error(
        "secrets in the store are sealed with key id {0:?}, which is not configured: add it \
         (secrets.key, secrets.old_keys or secrets.key_file) and, to retire it, run `acctor rotate-key`"
    )]
    UnknownKeyId(String),
    /// A sealed value is not in the sealed form.
    #[error("malformed sealed value: {0}")]
    Malformed(&'static str),
    /// The value did not authenticate: tampered with, or bound to another record.
    #[error(
        "sealed value does not open with key {0:?}: tampered with or moved from another record"
    )]
    Tampered(String),
}

/// A key id: 1 to 32 characters of `A-Z a-z 0-9 _ -`.
fn check_key_id(id: &str) -> Result<(), SecretsError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_KEY_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(SecretsError::BadKey(format!(
            "key id {id:?} must be 1 to {MAX_KEY_ID_LEN} characters of A-Z a-z 0-9 _ -"
        )))
    }
}

/// One key and its id.
#[derive(Clone)]
struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl Key {
    /// Parses `<key id>:<base64 of 32 bytes>` (standard base64, padding optional).
    fn parse(spec: &str) -> Result<Key, SecretsError> {
        let spec = spec.trim();
        let Some((id, encoded)) = spec.split_once(':') else {
            return Err(SecretsError::BadKey(
                "must be written <key id>:<base64 of 32 bytes>".into(),
            ));
        };
        check_key_id(id)?;
        // Padding is optional: decode without it.
        let bytes = Zeroizing::new(
            STANDARD_NO_PAD
                .decode(encoded.trim().trim_end_matches('='))
                .map_err(|_| SecretsError::BadKey(format!("key {id:?} is not valid base64")))?,
        );
        if bytes.len() != KEY_LEN {
            return Err(SecretsError::BadKey(format!(
                "key {id:?} is {} bytes, must be {KEY_LEN}",
                bytes.len()
            )));
        }
        Ok(Key::from_bytes(id, &bytes))
    }

    fn from_bytes(id: &str, bytes: &[u8]) -> Key {
        Key {
            id: id.to_owned(),
            // Only the length can be wrong, and callers checked it.
            cipher: XChaCha20Poly1305::new_from_slice(bytes)
                .unwrap_or_else(|_| unreachable!("key length checked")),
        }
    }
}

/// The keys secrets are sealed with: one current key that seals, and older ones that
/// only open what was sealed before a rotation. Cheap to clone.
#[derive(Clone)]
pub struct Keyring {
    inner: Arc<KeyringInner>,
}

struct KeyringInner {
    current: Key,
    older: Vec<Key>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.inner.current.id)
            .field(
                "older",
                &self.inner.older.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A key id of the value's envelope, when the value is in the sealed form.
pub fn key_id_of(sealed: &str) -> Option<&str> {
    let (version, rest) = sealed.split_once(':')?;
    let (id, _) = rest.split_once(':')?;
    (version == VERSION).then_some(id)
}

impl Keyring {
    /// A keyring from key specs (`<key id>:<base64 of 32 bytes>`): the first seals, the
    /// others only open. Rejects bad specs and duplicate ids.
    pub fn from_specs<S: AsRef<str>>(specs: &[S]) -> Result<Keyring, SecretsError> {
        let mut keys = specs
            .iter()
            .map(|spec| Key::parse(spec.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut seen = HashSet::new();
        for key in &keys {
            if !seen.insert(key.id.clone()) {
                return Err(SecretsError::DuplicateKeyId(key.id.clone()));
            }
        }
        if keys.is_empty() {
            return Err(SecretsError::NoKey);
        }
        let current = keys.remove(0);
        Ok(Keyring {
            inner: Arc::new(KeyringInner {
                current,
                older: keys,
            }),
        })
    }

    /// A keyring of one fresh random key with id `id`, and its spec to save.
    pub fn generate(id: &str) -> Result<(Keyring, Zeroizing<String>), SecretsError> {
        check_key_id(id)?;
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        let spec = Zeroizing::new(format!("{id}:{}", STANDARD.encode(bytes.as_ref())));
        Ok((Keyring::from_specs(&[spec.as_str()])?, spec))
    }

    /// The id of the key that seals.
    pub fn current_id(&self) -> &str {
        &self.inner.current.id
    }

    /// Whether a key with this id is in the ring.
    pub fn has(&self, id: &str) -> bool {
        self.key(id).is_some()
    }

    fn key(&self, id: &str) -> Option<&Key> {
        std::iter::once(&self.inner.current)
            .chain(&self.inner.older)
            .find(|k| k.id == id)
    }

    /// Seals `plaintext` with the current key, bound to `aad` (the record's identity).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> String {
        let key = &self.inner.current;
        let header = format!("{VERSION}:{}", key.id);
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ciphertext = key
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &full_aad(&header, aad),
                },
            )
            // XChaCha20-Poly1305 fails only past 256 GiB of plaintext.
            .unwrap_or_else(|_| unreachable!("plaintext within the cipher's limit"));
        let mut body = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&ciphertext);
        format!("{header}:{}", URL_SAFE_NO_PAD.encode(body))
    }

    /// Opens a value sealed by [`Keyring::seal`] with any key of the ring, given the same
    /// `aad` it was sealed with.
    pub fn open(&self, sealed: &str, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
        let (version, rest) = sealed
            .split_once(':')
            .ok_or(SecretsError::Malformed("no version"))?;
        if version != VERSION {
            return Err(SecretsError::Malformed("unknown version"));
        }
        let (id, encoded) = rest
            .split_once(':')
            .ok_or(SecretsError::Malformed("no key id"))?;
        let key = self
            .key(id)
            .ok_or_else(|| SecretsError::UnknownKeyId(id.to_owned()))?;
        let body = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| SecretsError::Malformed("body is not base64url"))?;
        if body.len() < NONCE_LEN + TAG_LEN {
            return Err(SecretsError::Malformed("body too short"));
        }
        let (nonce, ciphertext) = body.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| SecretsError::Malformed("body too short"))?;
        let header = format!("{VERSION}:{id}");
        key.cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &full_aad(&header, aad),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SecretsError::Tampered(id.to_owned()))
    }
}

/// The header, a NUL, then the caller's associated data: the header is authenticated
/// and cannot run into the caller's bytes.
fn full_aad(header: &str, aad: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(header.len() + 1 + aad.len());
    full.extend_from_slice(header.as_bytes());
    full.push(0);
    full.extend_from_slice(aad);
    full
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, byte: u8) -> String {
        format!("{id}:{}", STANDARD.encode([byte; KEY_LEN]))
    }

    #[test]
    fn a_sealed_value_round_trips_and_hides_the_plaintext() {
        let ring = Keyring::from_specs(&[spec("k1", 1)]).unwrap();
        let sealed = ring.seal(b"access-production-secret", b"accounts\0acc_1");
        assert!(sealed.starts_with("v1:k1:"), "{sealed}");
        assert!(!sealed.contains("secret"), "{sealed}");
        assert_eq!(key_id_of(&sealed), Some("k1"));
        let opened = ring.open(&sealed, b"accounts\0acc_1").unwrap();
        assert_eq!(opened.as_slice(), b"access-production-secret");
        // A fresh nonce each time: the same plaintext never seals the same way.
        assert_ne!(
            sealed,
            ring.seal(b"access-production-secret", b"accounts\0acc_1")
        );
    }

    #[test]
    fn tampering_or_another_records_aad_does_not_open() {
        let ring = Keyring::from_specs(&[spec("k1", 1)]).unwrap();
        let sealed = ring.seal(b"token", b"accounts\0acc_1");
        assert_eq!(
            ring.open(&sealed, b"accounts\0acc_2"),
            Err(SecretsError::Tampered("k1".into()))
        );
        // Flip one bit of the body.
        let (head, body) = sealed.rsplit_once(':').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(body).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let tampered = format!("{head}:{}", URL_SAFE_NO_PAD.encode(&bytes));
        assert_eq!(
            ring.open(&tampered, b"accounts\0acc_1"),
            Err(SecretsError::Tampered("k1".into()))
        );
        // Relabelling the value with another key id of the ring fails too.
        let both = Keyring::from_specs(&[spec("k1", 1), spec("k2", 2)]).unwrap();
        let relabelled = sealed.replacen("v1:k1:", "v1:k2:", 1);
        assert_eq!(
            both.open(&relabelled, b"accounts\0acc_1"),
            Err(SecretsError::Tampered("k2".into()))
        );
        assert!(matches!(
            ring.open("v1:k1:%%%", b""),
            Err(SecretsError::Malformed(_))
        ));
        assert!(matches!(
            ring.open("plain-token", b""),
            Err(SecretsError::Malformed(_))
        ));
    }

    #[test]
    fn an_unknown_key_id_is_named_in_the_error() {
        let old = Keyring::from_specs(&[spec("k1", 1)]).unwrap();
        let sealed = old.seal(b"token", b"aad");
        let new = Keyring::from_specs(&[spec("k2", 2)]).unwrap();
        let error = new.open(&sealed, b"aad").unwrap_err();
        assert_eq!(error, SecretsError::UnknownKeyId("k1".into()));
        assert!(error.to_string().contains("\"k1\""), "{error}");
    }

    #[test]
    fn older_keys_open_but_only_the_current_one_seals() {
        let old = Keyring::from_specs(&[spec("k1", 1)]).unwrap();
        let sealed = old.seal(b"token", b"aad");
        let rotated = Keyring::from_specs(&[spec("k2", 2), spec("k1", 1)]).unwrap();
        assert_eq!(rotated.current_id(), "k2");
        assert_eq!(rotated.open(&sealed, b"aad").unwrap().as_slice(), b"token");
        assert_eq!(key_id_of(&rotated.seal(b"token", b"aad")), Some("k2"));
    }

    #[test]
    fn bad_keys_are_refused_with_a_reason_that_holds_no_key_material() {
        let short = format!("k1:{}", STANDARD.encode([7u8; 16]));
        let error = Keyring::from_specs(&[short.as_str()]).unwrap_err();
        assert!(
            error.to_string().contains("16 bytes, must be 32"),
            "{error}"
        );
        let error = Keyring::from_specs(&["k1:not base64!"]).unwrap_err();
        assert!(error.to_string().contains("base64"), "{error}");
        let error = Keyring::from_specs(&[STANDARD.encode([7u8; 32])]).unwrap_err();
        assert!(error.to_string().contains("<key id>:"), "{error}");
        let error = Keyring::from_specs(&[spec("bad id", 1)]).unwrap_err();
        assert!(error.to_string().contains("key id"), "{error}");
        let error = Keyring::from_specs(&[spec("k1", 1), spec("k1", 2)]).unwrap_err();
        assert_eq!(error, SecretsError::DuplicateKeyId("k1".into()));
        assert_eq!(
            Keyring::from_specs::<&str>(&[]).unwrap_err(),
            SecretsError::NoKey
        );
        // Unpadded base64 is accepted as well.
        let unpadded = spec("k1", 3).trim_end_matches('=').to_owned();
        Keyring::from_specs(&[unpadded]).unwrap();
        let ring = Keyring::from_specs(&[spec("k1", 1), spec("k0", 0)]).unwrap();
        let printed = format!("{ring:?}");
        assert!(
            printed.contains("k1") && printed.contains("k0"),
            "{printed}"
        );
        assert!(!printed.contains(&STANDARD.encode([1u8; 32])), "{printed}");
    }
}
