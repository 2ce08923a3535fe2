//! The sandbox's optional on-disk state, so that `acctor sandbox --data-dir DIR` can be
//! restarted under a running acctor without acctor noticing: the same items, tokens and
//! transactions, cursors it issued still accepted (the cursor HMAC key is kept), and
//! webhooks still verifying with the key acctor already fetched (the signing key and
//! its `kid` are kept).
//!
//! Layout: `DIR/sandbox.json` holds the bank-wide fields and the keys, and
//! `DIR/items/<item_id>.json` one item each (accounts, transactions with their change
//! log, fault switches, rng state). One file per item keeps a periodic save cheap: only
//! items whose revision moved are copied (under their own lock, briefly), serialized
//! and rewritten. Every file is replaced atomically (temp file, fsync, rename, fsync of
//! the directory) and carries a `version`.
//!
//! Not kept: pending public tokens (a restart ends a Link flow, as it would at Plaid)
//! and the traffic counters (they describe one process's traffic).
//!
//! A cursor names a position in an item's change log. After a crash the files may be
//! older than positions already handed out, and once the log grows again such a cursor
//! would resume over different history. So `sandbox.json` says whether the last writer
//! shut down cleanly; it is written with `clean_shutdown: false` before the sandbox
//! serves anything and with `true` only by the final save. Loading an unclean snapshot
//! replaces the cursor key: every older cursor is refused and clients resynchronize
//! from scratch, which is always correct, instead of silently drifting.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::plaid_bank::{lock, Bank, Faults, Item};
use super::webhooks::WebhookSigner;
use crate::providers::plaid::wire::{PlaidAccount, PlaidTransaction};

/// The snapshot format this build writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 1;

const BANK_FILE: &str = "sandbox.json";
const ITEMS_DIR: &str = "items";
const SNAPSHOT_EXT: &str = "json";
const TEMP_EXT: &str = "tmp";

/// Why the sandbox could not start from, or save to, its data directory.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A file or directory could not be read, written or synced.
    #[error("sandbox data {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A snapshot file exists but does not hold a consistent sandbox state.
    #[error("sandbox snapshot {} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A snapshot written by another format version.
    #[error("sandbox snapshot {} has format version {found}; this build reads version {supported}", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version it declares.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The webhook signing key could not be created or read back.
    #[error("sandbox webhook signing key: {0}")]
    SigningKey(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> SandboxError {
    SandboxError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A `ChaCha8Rng` frozen mid-stream, so seeded choices continue where they stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RngState {
    seed: String,
    stream: u64,
    /// A u128, as decimal text: JSON numbers that large do not survive every reader.
    word_pos: String,
}

impl RngState {
    /// The position of `rng`.
    pub fn capture(rng: &ChaCha8Rng) -> Self {
        RngState {
            seed: hex::encode(rng.get_seed()),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    /// An rng at the captured position.
    pub fn restore(&self) -> Result<ChaCha8Rng, String> {
        use rand::SeedableRng;
        let seed: [u8; 32] = hex::decode(&self.seed)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or("rng seed is not 32 hex-encoded bytes")?;
        let word_pos: u128 = self
            .word_pos
            .parse()
            .map_err(|_| "rng word position is not a number")?;
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(word_pos);
        Ok(rng)
    }
}

/// One item as stored in `items/<item_id>.json`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ItemSnapshot {
    pub version: u32,
    pub number: u64,
    pub item_id: String,
    pub access_token: String,
    pub institution_id: String,
    pub webhook: Option<String>,
    pub faults: Faults,
    pub accounts: Vec<PlaidAccount>,
    /// Parallel to `accounts`: which kind of spending lands in each.
    pub account_kinds: Vec<String>,
    /// Transaction ids in the order they changed (the positions cursors name).
    pub log: Vec<String>,
    /// Every transaction ever created, removed ones as tombstones.
    pub transactions: Vec<TxnSnapshot>,
    pub rng: RngState,
}

/// A transaction and where it sits in the change log.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TxnSnapshot {
    pub created_at: u64,
    pub last_change: u64,
    pub removed: bool,
    pub transaction: PlaidTransaction,
}

/// The bank-wide fields of a snapshot, in memory.
pub(crate) struct BankHeader {
    pub seed: u64,
    pub next_number: u64,
    pub shared_rng: RngState,
    pub default_webhook: Option<String>,
    pub cursor_key: [u8; 32],
}

/// `sandbox.json`. Holds secrets: written owner-only, never logged.
#[derive(Serialize, Deserialize)]
struct BankFile {
    version: u32,
    /// Whether the writer stopped cleanly after this save (see the module docs).
    clean_shutdown: bool,
    seed: u64,
    next_number: u64,
    shared_rng: RngState,
    default_webhook: Option<String>,
    /// Hex of the 32-byte cursor HMAC key.
    cursor_key: String,
    signing_key: SigningKeyFile,
}

#[derive(Serialize, Deserialize)]
struct SigningKeyFile {
    kid: String,
    created_at: i64,
    /// Standard base64 of the PKCS#8 document.
    pkcs8: String,
}

/// Just the version, to tell an old or new format from a damaged file.
#[derive(Deserialize)]
struct VersionProbe {
    version: u32,
}

/// What was found in (or created for) a data directory.
pub(crate) struct Opened {
    pub bank: Bank,
    pub signer: WebhookSigner,
    pub persister: Persister,
    /// Whether a snapshot was loaded (false: a fresh sandbox).
    pub restored: bool,
}

/// What the last save wrote, so the next one skips what has not changed.
#[derive(Default)]
struct Saved {
    items: HashMap<String, u64>,
    bank: Option<u64>,
    clean: bool,
}

/// Saves a bank into its data directory. One save runs at a time.
pub(crate) struct Persister {
    dir: PathBuf,
    items_dir: PathBuf,
    saved: Mutex<Saved>,
}

/// What one save wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SaveReport {
    /// Item files rewritten.
    pub items: usize,
    /// Whether `sandbox.json` was rewritten.
    pub bank: bool,
}

/// Loads the sandbox kept in `dir`, or prepares a fresh one there (`fresh` makes its
/// keys). Nothing is written yet: the caller saves once it has applied its settings.
pub(crate) fn open(
    dir: &Path,
    seed: u64,
    today: chrono::NaiveDate,
    fresh: impl FnOnce() -> Result<(WebhookSigner, [u8; 32]), SandboxError>,
) -> Result<Opened, SandboxError> {
    let items_dir = dir.join(ITEMS_DIR);
    fs::create_dir_all(&items_dir).map_err(io_error(&items_dir))?;
    let bank_path = dir.join(BANK_FILE);
    let item_files = snapshot_files(&items_dir)?;
    if !bank_path.exists() {
        if let Some(orphan) = item_files.first() {
            return Err(corrupt(
                &bank_path,
                format!(
                    "missing, but item snapshots such as {} exist",
                    orphan.display()
                ),
            ));
        }
        let (signer, cursor_key) = fresh()?;
        return Ok(Opened {
            bank: Bank::new(seed, today, cursor_key),
            signer,
            persister: Persister::new(dir, items_dir, HashMap::new()),
            restored: false,
        });
    }

    let file: BankFile = read_snapshot(&bank_path, |f: &BankFile| f.version)?;
    let mut cursor_key: [u8; 32] = hex::decode(&file.cursor_key)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| corrupt(&bank_path, "cursor key is not 32 hex-encoded bytes"))?;
    let pkcs8 = STANDARD
        .decode(&file.signing_key.pkcs8)
        .map_err(|_| corrupt(&bank_path, "signing key is not base64"))?;
    let signer = WebhookSigner::from_pkcs8(
        pkcs8,
        file.signing_key.kid.clone(),
        file.signing_key.created_at,
    )
    .map_err(|e| corrupt(&bank_path, e.to_string()))?;
    if file.seed != seed {
        warn!(
            configured = seed,
            stored = file.seed,
            "sandbox seed differs from the stored one, keeping the stored seed"
        );
    }
    if !file.clean_shutdown {
        // See the module docs: positions handed out after the last save may be lost.
        cursor_key = rand::rngs::OsRng.gen();
        warn!(
            dir = %dir.display(),
            "sandbox did not shut down cleanly, cursors issued before this start will be refused"
        );
    }

    let mut items = Vec::with_capacity(item_files.len());
    for path in &item_files {
        let snapshot: ItemSnapshot = read_snapshot(path, |s: &ItemSnapshot| s.version)?;
        if path.file_stem().and_then(|s| s.to_str()) != Some(snapshot.item_id.as_str()) {
            return Err(corrupt(path, "file name does not match its item_id"));
        }
        items.push(Item::from_snapshot(snapshot).map_err(|reason| corrupt(path, reason))?);
    }
    let saved_items = items.iter().map(|i| (i.item_id.clone(), 0)).collect();
    let header = BankHeader {
        seed: file.seed,
        next_number: file.next_number,
        shared_rng: file.shared_rng,
        default_webhook: file.default_webhook,
        cursor_key,
    };
    let bank = Bank::restore(header, today, items).map_err(|reason| corrupt(dir, reason))?;
    info!(dir = %dir.display(), items = item_files.len(), "sandbox state loaded");
    Ok(Opened {
        bank,
        signer,
        persister: Persister::new(dir, items_dir, saved_items),
        restored: true,
    })
}

/// The `*.json` files of `dir`, sorted (leftover temp files are ignored: a rename that
/// did not happen means the previous version is still in place).
fn snapshot_files(dir: &Path) -> Result<Vec<PathBuf>, SandboxError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let path = entry.map_err(io_error(dir))?.path();
        if path.extension().and_then(|e| e.to_str()) == Some(SNAPSHOT_EXT) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads and parses one snapshot file, telling a foreign format version apart from
/// damage.
fn read_snapshot<T: DeserializeOwned>(
    path: &Path,
    version_of: impl Fn(&T) -> u32,
) -> Result<T, SandboxError> {
    let bytes = fs::read(path).map_err(io_error(path))?;
    let unsupported = |found| SandboxError::UnsupportedVersion {
        path: path.to_path_buf(),
        found,
        supported: FORMAT_VERSION,
    };
    match serde_json::from_slice::<T>(&bytes) {
        Ok(value) if version_of(&value) == FORMAT_VERSION => Ok(value),
        Ok(value) => Err(unsupported(version_of(&value))),
        Err(e) => match serde_json::from_slice::<VersionProbe>(&bytes) {
            Ok(probe) if probe.version != FORMAT_VERSION => Err(unsupported(probe.version)),
            _ => Err(corrupt(path, e.to_string())),
        },
    }
}

impl Persister {
    fn new(dir: &Path, items_dir: PathBuf, items: HashMap<String, u64>) -> Self {
        Persister {
            dir: dir.to_path_buf(),
            items_dir,
            saved: Mutex::new(Saved {
                items,
                bank: None,
                clean: false,
            }),
        }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes every item whose revision moved since the last save, then
    /// `sandbox.json` if the bank-wide fields or the clean flag changed. Blocking: run
    /// it off the async workers.
    pub fn save(
        &self,
        bank: &Bank,
        signer: &WebhookSigner,
        clean: bool,
    ) -> Result<SaveReport, SandboxError> {
        let mut saved = lock(&self.saved);
        let mut report = SaveReport::default();
        for item in bank.all_items() {
            let previous = saved.items.get(&item.item_id).copied();
            let Some((revision, snapshot)) = item.snapshot_if_changed(previous) else {
                continue;
            };
            let path = self.item_path(&item.item_id)?;
            write_file(&path, &encode(&path, &snapshot)?)?;
            saved.items.insert(item.item_id.clone(), revision);
            report.items += 1;
        }
        if report.items > 0 {
            // One directory sync makes every rename above durable.
            sync_dir(&self.items_dir)?;
        }
        // Read before capturing: a change racing the capture bumps it again, so the
        // next save writes the header once more.
        let bank_revision = bank.revision();
        if saved.bank != Some(bank_revision) || saved.clean != clean {
            let header = bank.header();
            let jwk = signer.jwk();
            let file = BankFile {
                version: FORMAT_VERSION,
                clean_shutdown: clean,
                seed: header.seed,
                next_number: header.next_number,
                shared_rng: header.shared_rng,
                default_webhook: header.default_webhook,
                cursor_key: hex::encode(header.cursor_key),
                signing_key: SigningKeyFile {
                    kid: jwk.kid.clone(),
                    created_at: jwk.created_at,
                    pkcs8: STANDARD.encode(signer.pkcs8()),
                },
            };
            let path = self.dir.join(BANK_FILE);
            write_file(&path, &encode(&path, &file)?)?;
            sync_dir(&self.dir)?;
            saved.bank = Some(bank_revision);
            saved.clean = clean;
            report.bank = true;
        }
        Ok(report)
    }

    fn item_path(&self, item_id: &str) -> Result<PathBuf, SandboxError> {
        // Ids are generated here, but they become file names: refuse anything that
        // could leave the directory.
        let safe = !item_id.is_empty()
            && item_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !safe {
            return Err(corrupt(
                &self.items_dir,
                format!("item id {item_id:?} is not usable as a file name"),
            ));
        }
        Ok(self.items_dir.join(format!("{item_id}.{SNAPSHOT_EXT}")))
    }
}

fn encode<T: Serialize>(path: &Path, value: &T) -> Result<Vec<u8>, SandboxError> {
    // Only non-string map keys or failing Serialize impls make this fail; neither
    // exists in these types, but an error beats a panic.
    serde_json::to_vec(value).map_err(|e| corrupt(path, format!("cannot encode: {e}")))
}

/// Replaces `path` with `bytes`: temp file, fsync, rename. The caller syncs the
/// directory afterwards.
/// Writes `bytes` to `path` atomically: a temp file beside it, fsynced, renamed over.
/// Each write has its own temp name, so two writers of the same file (a saver still
/// finishing after its handle was dropped, and a sandbox reopened on the same dir) never
/// rename each other's temp file away; the last rename wins whole.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), SandboxError> {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temp = path.with_extension(format!("{}.{n}.{TEMP_EXT}", std::process::id()));
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        // The files hold access tokens and private keys.
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&temp).map_err(io_error(&temp))?;
    file.write_all(bytes).map_err(io_error(&temp))?;
    file.sync_all().map_err(io_error(&temp))?;
    drop(file);
    fs::rename(&temp, path).map_err(io_error(path))
}

fn sync_dir(dir: &Path) -> Result<(), SandboxError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

#[cfg(test)]
mod tests {
    use rand::{RngCore, SeedableRng};

    use super::*;

    #[test]
    fn rng_state_resumes_the_stream_exactly() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        rng.set_stream(3);
        for _ in 0..7 {
            rng.next_u32();
        }
        let state = RngState::capture(&rng);
        let json = serde_json::to_string(&state).unwrap();
        let mut restored = serde_json::from_str::<RngState>(&json)
            .unwrap()
            .restore()
            .unwrap();
        let expected: Vec<u64> = (0..20).map(|_| rng.next_u64()).collect();
        let got: Vec<u64> = (0..20).map(|_| restored.next_u64()).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn write_file_replaces_the_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_file(&path, b"one").unwrap();
        write_file(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(snapshot_files(dir.path()).unwrap(), vec![path.clone()]);
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(left, vec![path.clone()], "no temp file left");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "owner-only");
        }
    }

    #[test]
    fn concurrent_writers_of_one_file_never_fail_and_leave_one_whole_file() {
        // A saver finishing after its handle was dropped and a sandbox reopened on the
        // same dir write the same files at once; with a shared temp name one of them
        // found its temp file renamed away (NotFound).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sandbox.json");
        std::thread::scope(|scope| {
            for writer in 0..4u8 {
                let path = &path;
                scope.spawn(move || {
                    for _ in 0..200 {
                        write_file(path, &[writer; 64]).expect("every write succeeds");
                    }
                });
            }
        });
        let content = fs::read(&path).unwrap();
        assert_eq!(content.len(), 64);
        assert!(
            content.iter().all(|b| *b == content[0]),
            "one writer's bytes"
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn a_snapshot_of_another_version_is_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        fs::write(&path, br#"{"version": 99, "something": "else"}"#).unwrap();
        let err = read_snapshot(&path, |s: &ItemSnapshot| s.version).unwrap_err();
        assert!(
            matches!(err, SandboxError::UnsupportedVersion { found: 99, .. }),
            "{err}"
        );
        fs::write(&path, b"{\"version\": 1, \"item_id\": ").unwrap();
        let err = read_snapshot(&path, |s: &ItemSnapshot| s.version).unwrap_err();
        assert!(matches!(err, SandboxError::Corrupt { .. }), "{err}");
    }
}
