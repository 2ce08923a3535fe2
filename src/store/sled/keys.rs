//! Byte layout of the sled store: tree names, key encodings and the versioned record
//! envelope. Kept apart from the transactions so the on-disk format can be read (and
//! migrated) in one place.
//!
//! Keys that combine several strings length-prefix every component but the last, so no
//! id can contain a separator that makes one key a prefix of another account's keys.
//! Transaction keys end in `YYYY-MM-DD|id`: a fixed-width date then the id, so byte
//! order is (date, id) order and the same string doubles as the public page token.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{de::DeserializeOwned, Serialize};

use crate::domain::flags::FlagKey;
use crate::domain::operations::OperationId;
use crate::domain::{AccountId, ProviderKind};
use crate::store::{DueKind, StoreError};

/// Account records by canonical id.
pub(super) const ACCOUNTS: &str = "accounts";
/// Lookup keys (item ids, aliases, owner ids) to account ids.
pub(super) const LOOKUP: &str = "lookup";
/// Transactions by (account, date, id).
pub(super) const TRANSACTIONS: &str = "transactions";
/// (account, transaction id) to the date part of the transaction's key.
pub(super) const TXN_INDEX: &str = "txn_index";
/// Pending webhooks by (account, seq).
pub(super) const INBOX: &str = "inbox";
/// Webhooks for items not linked yet, by (provider, item id, seq).
pub(super) const UNROUTED: &str = "unrouted";
/// Dedup keys to their expiry.
pub(super) const DEDUP: &str = "dedup";
/// Inbox entries a running sync has read (same keys as the inbox, empty values).
pub(super) const CLAIMS: &str = "claims";

/// Incidents by id (big-endian u64: byte order is opening order).
pub(super) const INCIDENTS: &str = "incidents";
/// (subject, kind) of each open incident to its id: at most one open per pair. The
/// subject is an account or operation id; the two never collide (`acc_` and `op_`), so
/// account incidents kept the keys they had before operations existed.
pub(super) const INCIDENT_OPEN: &str = "incident_open";
/// Runtime flags by their key ([`flag_key`]).
pub(super) const FLAGS: &str = "flags";
/// Every flag's changes by (flag key, inverted seq) ([`flag_history_key`]): one flag's
/// history is one prefix, newest first in byte order.
pub(super) const FLAG_HISTORY: &str = "flag_history";
/// Every change of every flag by inverted seq: the global history, newest first.
pub(super) const FLAG_CHANGES: &str = "flag_changes";
/// Undelivered outbox messages, by id (big-endian u64). Records written before the outbox
/// was generic are alert records, read through a fallback (see `outbox.rs`).
pub(super) const OUTBOX: &str = "outbox";
/// The due-time index: (kind tag, due time in big-endian millis, subject) to the
/// entry's payload, so one kind's due part is one range read from the kind's start.
/// Byte order is (kind, time, subject); every read is of one kind.
pub(super) const DUE: &str = "due";
/// (kind tag, subject) to the big-endian millis of the subject's entry in `due`: at most
/// one entry per (kind, subject), found without a scan. Also holds [`DUE_MIGRATED`].
pub(super) const DUE_SUBJECTS: &str = "due_subjects";
/// Marker in `due_subjects` written once the indexes of older versions were moved into
/// `due` (no kind has tag 0, so no subject key starts with a NUL byte).
pub(super) const DUE_MIGRATED: &[u8] = b"\0migrated";

/// Operation records by canonical id (byte order is creation order: see
/// [`OperationId`]).
pub(super) const OPERATIONS: &str = "operations";
/// An operation's lookup keys to its id: `r` + request id, `t` + tracking id.
pub(super) const OPERATION_KEYS: &str = "operation_keys";
/// Pending bank statuses by (operation, seq).
pub(super) const OPERATION_INBOX: &str = "operation_inbox";
/// Bank statuses for tracking ids no operation has yet, by (tracking id, seq).
pub(super) const OPERATION_UNROUTED: &str = "operation_unrouted";
/// Customer id to the ids of its operations in progress (not terminal), sorted: one
/// key per customer, so a create reads it inside its transaction (no range scans there).
pub(super) const OPERATION_OPEN: &str = "operation_open";
/// Operation state name to how many operations are in it (big-endian u64).
pub(super) const OPERATION_COUNTS: &str = "operation_counts";

/// Trees of older versions, read once by the migration into `due`, then dropped.
pub(super) mod legacy {
    /// Retry records by (due time in big-endian millis, account id).
    pub(in crate::store::sled) const RETRIES: &str = "retries";
    /// Account id to the key of its record in `retries`.
    pub(in crate::store::sled) const RETRY_INDEX: &str = "retry_index";
    /// The polling index: (anchor in big-endian millis, account id) to the account id.
    pub(in crate::store::sled) const POLL: &str = "poll";
    /// Account id to the key of its entry in `poll`; also holds [`POLL_BACKFILLED`].
    pub(in crate::store::sled) const POLL_INDEX: &str = "poll_index";
    /// Marker in `poll_index`: every linked account had its polling entry.
    pub(in crate::store::sled) const POLL_BACKFILLED: &[u8] = b"\0backfilled";
    /// The outbox's due-time index: (next attempt in big-endian millis, alert id).
    pub(in crate::store::sled) const OUTBOX_DUE: &str = "outbox_due";
    /// Every legacy index tree.
    pub(in crate::store::sled) const TREES: [&str; 5] =
        [RETRIES, RETRY_INDEX, POLL, POLL_INDEX, OUTBOX_DUE];

    /// The time (millis) in front of a legacy retry, poll or outbox-due key.
    pub(in crate::store::sled) fn key_millis(key: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(key.get(..8)?.try_into().ok()?))
    }
}

/// Version byte written in front of every record; bump it with a migration.
const RECORD_VERSION: u8 = 1;
/// Version of records stored as LZ4-compressed JSON (transaction rows: a 50,000-row
/// initial sync writes about half the bytes, and sled's insert cost grows with them).
const RECORD_VERSION_LZ4: u8 = 2;

/// Length of the date component of a transaction key (`YYYY-MM-DD`).
pub(super) const DATE_LEN: usize = 10;

/// Encodes a record: one version byte, then JSON.
pub(super) fn encode<T: Serialize>(tree: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![RECORD_VERSION];
    serde_json::to_writer(&mut out, value).map_err(|e| StoreError::Corrupt {
        tree,
        detail: format!("cannot encode record: {e}"),
    })?;
    Ok(out)
}

/// Encodes a record as LZ4-compressed JSON (version 2), for large, numerous values.
pub(super) fn encode_compressed<T: Serialize>(
    tree: &'static str,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    let json = serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
        tree,
        detail: format!("cannot encode record: {e}"),
    })?;
    let mut out = vec![RECORD_VERSION_LZ4];
    out.extend_from_slice(&lz4_flex::compress_prepend_size(&json));
    Ok(out)
}

/// Decodes a record written by [`encode`] or [`encode_compressed`]; unknown versions,
/// bad compression and bad JSON are `Corrupt`.
pub(super) fn decode<T: DeserializeOwned>(
    tree: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, body)) => {
            serde_json::from_slice(body).map_err(|e| StoreError::Corrupt {
                tree,
                detail: format!("bad record body: {e}"),
            })
        }
        Some((&RECORD_VERSION_LZ4, body)) => {
            let json =
                lz4_flex::decompress_size_prepended(body).map_err(|e| StoreError::Corrupt {
                    tree,
                    detail: format!("bad compressed record: {e}"),
                })?;
            serde_json::from_slice(&json).map_err(|e| StoreError::Corrupt {
                tree,
                detail: format!("bad record body: {e}"),
            })
        }
        Some((version, _)) => Err(StoreError::Corrupt {
            tree,
            detail: format!("unknown record version {version}"),
        }),
        None => Err(StoreError::Corrupt {
            tree,
            detail: "empty record".to_owned(),
        }),
    }
}

/// Appends `s` with a 4-byte big-endian length in front.
fn push_prefixed(buf: &mut Vec<u8>, s: &str) {
    // Ids longer than 4 GiB cannot reach here (request size limits); saturate rather
    // than panic so the function stays total.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn prefixed(s: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(4 + s.len() + 32);
    push_prefixed(&mut buf, s);
    buf
}

/// Key of an account record: the id's bytes, so the tree iterates in id order.
pub(super) fn account_key(id: &AccountId) -> Vec<u8> {
    id.as_str().as_bytes().to_vec()
}

/// Prefix of every provider's lookup key for `item_id`.
pub(super) fn item_prefix(item_id: &str) -> Vec<u8> {
    let mut k = vec![b'i'];
    push_prefixed(&mut k, item_id);
    k
}

/// Lookup key of a provider item id.
pub(super) fn item_key(provider: ProviderKind, item_id: &str) -> Vec<u8> {
    let mut k = item_prefix(item_id);
    k.extend_from_slice(provider.as_str().as_bytes());
    k
}

/// Lookup key of an alias.
pub(super) fn alias_key(alias: &str) -> Vec<u8> {
    let mut k = vec![b'a'];
    k.extend_from_slice(alias.as_bytes());
    k
}

/// Prefix of the lookup keys of every account owned by `owner_id`.
pub(super) fn owner_prefix(owner_id: &str) -> Vec<u8> {
    let mut k = vec![b'o'];
    push_prefixed(&mut k, owner_id);
    k
}

/// Lookup key saying that `owner_id` owns `account`; owners may own several accounts,
/// so the account is part of the key.
pub(super) fn owner_key(owner_id: &str, account: &AccountId) -> Vec<u8> {
    let mut k = owner_prefix(owner_id);
    k.extend_from_slice(account.as_str().as_bytes());
    k
}

/// Prefix of the retired lookup keys named `key`: an unlinked account keeps each of its
/// keys (item id, aliases, owner id) here, so the API still finds it by them (to show or
/// purge it), while webhooks and new links, which read only the live keys, do not.
pub(super) fn retired_prefix(key: &str) -> Vec<u8> {
    let mut k = vec![b'r'];
    push_prefixed(&mut k, key);
    k
}

/// Retired lookup key `key` of the unlinked `account`.
pub(super) fn retired_key(key: &str, account: &AccountId) -> Vec<u8> {
    let mut k = retired_prefix(key);
    k.extend_from_slice(account.as_str().as_bytes());
    k
}

/// Marker in the lookup tree: every unlinked account's keys have been retired (stores
/// written before retired keys existed get them at their first open).
pub(super) const RETIRED_MIGRATED: &[u8] = b"\0retired";

/// Prefix shared by everything one account owns in the transactions, index and inbox trees.
pub(super) fn account_prefix(account: &AccountId) -> Vec<u8> {
    prefixed(account.as_str())
}

/// The `YYYY-MM-DD` component of a transaction key. Years outside 0..=9999 are clamped
/// so the component stays fixed-width (and ordered); the row keeps its real date.
pub(super) fn date_component(date: NaiveDate) -> String {
    let clamped = if date.year() < 0 {
        NaiveDate::from_ymd_opt(0, 1, 1)
    } else if date.year() > 9999 {
        NaiveDate::from_ymd_opt(9999, 12, 31)
    } else {
        Some(date)
    };
    // from_ymd_opt of those two constants is always Some; fall back to the date itself.
    clamped.unwrap_or(date).format("%Y-%m-%d").to_string()
}

/// Key of a transaction row: account prefix, `YYYY-MM-DD|`, id.
pub(super) fn txn_key(account: &AccountId, date_component: &str, id: &str) -> Vec<u8> {
    let mut k = account_prefix(account);
    k.extend_from_slice(date_component.as_bytes());
    k.push(b'|');
    k.extend_from_slice(id.as_bytes());
    k
}

/// The page token of a transaction key: everything after the account prefix
/// (`YYYY-MM-DD|id`). `None` when the key does not carry UTF-8 after the prefix.
pub(super) fn txn_token(prefix_len: usize, key: &[u8]) -> Option<String> {
    key.get(prefix_len..)
        .and_then(|rest| std::str::from_utf8(rest).ok())
        .map(str::to_owned)
}

/// The transaction id inside a transaction key.
pub(super) fn txn_id_from_key(prefix_len: usize, key: &[u8]) -> Option<String> {
    key.get(prefix_len + DATE_LEN + 1..)
        .and_then(|rest| std::str::from_utf8(rest).ok())
        .map(str::to_owned)
}

/// Key of the (account, transaction id) → date index.
pub(super) fn txn_index_key(account: &AccountId, id: &str) -> Vec<u8> {
    let mut k = account_prefix(account);
    k.extend_from_slice(id.as_bytes());
    k
}

/// Key of an inbox entry: account prefix then the big-endian seq, so entries sort by seq.
pub(super) fn inbox_key(account: &AccountId, seq: u64) -> Vec<u8> {
    let mut k = account_prefix(account);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The account an inbox key belongs to (the inverse of [`inbox_key`]'s prefix).
pub(super) fn inbox_key_account(key: &[u8]) -> Option<AccountId> {
    let len = u32::from_be_bytes(key.get(..4)?.try_into().ok()?) as usize;
    let id = std::str::from_utf8(key.get(4..4 + len)?).ok()?;
    Some(AccountId(id.to_string()))
}

/// Prefix of the events kept for one not-yet-linked item.
pub(super) fn unrouted_prefix(provider: ProviderKind, item_id: &str) -> Vec<u8> {
    let mut k = prefixed(provider.as_str());
    push_prefixed(&mut k, item_id);
    k
}

/// Key of an event kept for a not-yet-linked item.
pub(super) fn unrouted_key(provider: ProviderKind, item_id: &str, seq: u64) -> Vec<u8> {
    let mut k = unrouted_prefix(provider, item_id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Key of an incident or an outbox record: its id, big-endian, so ids sort in order.
pub(super) fn id_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

/// Key of the open incident of (subject, kind) in `incident_open`; `subject` is the
/// [`IncidentSubject::key`](crate::domain::incidents::IncidentSubject::key).
pub(super) fn incident_open_key(subject: &str, kind: &str) -> Vec<u8> {
    let mut k = prefixed(subject);
    k.extend_from_slice(kind.as_bytes());
    k
}

/// Key of a flag in `flags`: its path, `name/market/segment` (neither a flag's name nor
/// a segment contains `/`, so the path names one key).
pub(super) fn flag_key(key: &FlagKey) -> Vec<u8> {
    key.path().into_bytes()
}

/// Prefix of one flag's changes in `flag_history`: its path, length-prefixed so no
/// flag's prefix is the start of another's (a market may be any string).
pub(super) fn flag_history_prefix(key: &FlagKey) -> Vec<u8> {
    prefixed(&key.path())
}

/// `seq` so that byte order is newest first: `u64::MAX - seq`, big-endian.
pub(super) fn inverted_seq(seq: u64) -> [u8; 8] {
    (u64::MAX - seq).to_be_bytes()
}

/// Key of a flag's change in `flag_history`: its prefix, then the inverted seq.
pub(super) fn flag_history_key(key: &FlagKey, seq: u64) -> Vec<u8> {
    let mut k = flag_history_prefix(key);
    k.extend_from_slice(&inverted_seq(seq));
    k
}

/// Key of an operation record: the id's bytes, so the tree iterates in id order.
pub(super) fn operation_key(id: &OperationId) -> Vec<u8> {
    id.as_str().as_bytes().to_vec()
}

/// Key of an operation's request id in `operation_keys`.
pub(super) fn operation_request_key(request_id: &str) -> Vec<u8> {
    let mut k = vec![b'r'];
    k.extend_from_slice(request_id.as_bytes());
    k
}

/// Key of an operation's tracking id in `operation_keys`.
pub(super) fn operation_tracking_key(tracking_id: &str) -> Vec<u8> {
    let mut k = vec![b't'];
    k.extend_from_slice(tracking_id.as_bytes());
    k
}

/// Prefix of an operation's pending events in `operation_inbox`.
pub(super) fn operation_inbox_prefix(id: &OperationId) -> Vec<u8> {
    prefixed(id.as_str())
}

/// Key of a pending event: the operation's prefix then the big-endian seq.
pub(super) fn operation_inbox_key(id: &OperationId, seq: u64) -> Vec<u8> {
    let mut k = operation_inbox_prefix(id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The operation an `operation_inbox` key belongs to.
pub(super) fn operation_inbox_key_operation(key: &[u8]) -> Option<OperationId> {
    let len = u32::from_be_bytes(key.get(..4)?.try_into().ok()?) as usize;
    let id = std::str::from_utf8(key.get(4..4 + len)?).ok()?;
    Some(OperationId(id.to_string()))
}

/// Prefix of the events kept for a tracking id in `operation_unrouted`.
pub(super) fn operation_unrouted_prefix(tracking_id: &str) -> Vec<u8> {
    prefixed(tracking_id)
}

/// Key of an event kept for a tracking id: its prefix then the big-endian seq.
pub(super) fn operation_unrouted_key(tracking_id: &str, seq: u64) -> Vec<u8> {
    let mut k = operation_unrouted_prefix(tracking_id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Key of a customer's entry in `operation_open`.
pub(super) fn operation_customer_key(customer_id: &str) -> Vec<u8> {
    customer_id.as_bytes().to_vec()
}

/// A time as stored in due-index keys: unsigned millis since the epoch, times before
/// it clamped to 0, so big-endian byte order is time order.
pub(super) fn due_millis(at: DateTime<Utc>) -> u64 {
    u64::try_from(at.timestamp_millis()).unwrap_or(0)
}

/// The time a stored due-index millis value stands for (`None` past chrono's range).
pub(super) fn due_time(millis: u64) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_millis(i64::try_from(millis).ok()?)
}

/// Key of an entry in `due`: kind tag, big-endian millis, subject.
pub(super) fn due_key(kind: DueKind, millis: u64, subject: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + subject.len());
    k.push(kind.tag());
    k.extend_from_slice(&millis.to_be_bytes());
    k.extend_from_slice(subject.as_bytes());
    k
}

/// The (kind, millis, subject) of a `due` key; `None` for a key this version cannot
/// read (unknown kind, short, or a subject that is not UTF-8).
pub(super) fn due_key_parts(key: &[u8]) -> Option<(DueKind, u64, &str)> {
    let kind = DueKind::from_tag(*key.first()?)?;
    let millis = u64::from_be_bytes(key.get(1..9)?.try_into().ok()?);
    let subject = std::str::from_utf8(key.get(9..)?).ok()?;
    Some((kind, millis, subject))
}

/// Key of a subject's entry in `due_subjects`: kind tag, subject.
pub(super) fn due_subject_key(kind: DueKind, subject: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + subject.len());
    k.push(kind.tag());
    k.extend_from_slice(subject.as_bytes());
    k
}

/// The smallest key greater than every key starting with `prefix` (`None`: no bound).
pub(super) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_rejects_unknown_versions() {
        let bytes = encode(ACCOUNTS, &vec![1u32, 2]).unwrap();
        assert_eq!(bytes[0], RECORD_VERSION);
        assert_eq!(decode::<Vec<u32>>(ACCOUNTS, &bytes).unwrap(), vec![1, 2]);

        let mut future = bytes.clone();
        future[0] = 9;
        assert!(matches!(
            decode::<Vec<u32>>(ACCOUNTS, &future),
            Err(StoreError::Corrupt {
                tree: "accounts",
                ..
            })
        ));
        assert!(matches!(
            decode::<Vec<u32>>(ACCOUNTS, &[]),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            decode::<Vec<u32>>(ACCOUNTS, &[RECORD_VERSION, b'{']),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn compressed_records_round_trip_and_shrink() {
        let row: Vec<String> = (0..40)
            .map(|i| format!("merchant_name_{}", i % 3))
            .collect();
        let plain = encode(TRANSACTIONS, &row).unwrap();
        let packed = encode_compressed(TRANSACTIONS, &row).unwrap();
        assert_eq!(packed[0], RECORD_VERSION_LZ4);
        assert!(
            packed.len() * 2 < plain.len(),
            "{} vs {}",
            packed.len(),
            plain.len()
        );
        assert_eq!(decode::<Vec<String>>(TRANSACTIONS, &packed).unwrap(), row);
        assert_eq!(decode::<Vec<String>>(TRANSACTIONS, &plain).unwrap(), row);
        let mut broken = packed.clone();
        broken.truncate(6);
        assert!(matches!(
            decode::<Vec<String>>(TRANSACTIONS, &broken),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn account_prefixes_do_not_overlap() {
        let a = AccountId("acc_a".into());
        let ab = AccountId("acc_ab".into());
        assert!(!txn_key(&ab, "2024-01-01", "x").starts_with(&account_prefix(&a)));
        assert!(!inbox_key(&ab, 1).starts_with(&account_prefix(&a)));
    }

    #[test]
    fn transaction_keys_sort_by_date_then_id() {
        let acc = AccountId("acc_1".into());
        let d = |y, m, d| date_component(NaiveDate::from_ymd_opt(y, m, d).unwrap());
        let mut keys = [
            txn_key(&acc, &d(2024, 2, 1), "a"),
            txn_key(&acc, &d(2023, 12, 31), "z"),
            txn_key(&acc, &d(2024, 1, 15), "b"),
            txn_key(&acc, &d(2024, 1, 15), "a"),
        ];
        keys.sort();
        let prefix = account_prefix(&acc).len();
        let tokens: Vec<_> = keys.iter().map(|k| txn_token(prefix, k).unwrap()).collect();
        assert_eq!(
            tokens,
            [
                "2023-12-31|z",
                "2024-01-15|a",
                "2024-01-15|b",
                "2024-02-01|a"
            ]
        );
        assert_eq!(txn_id_from_key(prefix, &keys[1]).unwrap(), "a");
    }

    #[test]
    fn out_of_range_years_are_clamped_to_fixed_width() {
        let far = NaiveDate::from_ymd_opt(12345, 1, 1).unwrap();
        assert_eq!(date_component(far), "9999-12-31");
        let before = NaiveDate::from_ymd_opt(-5, 1, 1).unwrap();
        assert_eq!(date_component(before), "0000-01-01");
    }

    #[test]
    fn inbox_keys_sort_by_seq() {
        let acc = AccountId("acc_1".into());
        assert!(inbox_key(&acc, 255) < inbox_key(&acc, 256));
    }

    #[test]
    fn operation_inbox_keys_invert_and_do_not_overlap() {
        let a = OperationId("op_a".into());
        let ab = OperationId("op_ab".into());
        assert_eq!(
            operation_inbox_key_operation(&operation_inbox_key(&a, 7)),
            Some(a.clone())
        );
        assert!(!operation_inbox_key(&ab, 1).starts_with(&operation_inbox_prefix(&a)));
        assert!(operation_inbox_key(&a, 255) < operation_inbox_key(&a, 256));
        assert!(!operation_unrouted_key("tb", 1).starts_with(&operation_unrouted_prefix("t")));
        assert_ne!(operation_request_key("x"), operation_tracking_key("x"));
    }

    #[test]
    fn inbox_key_account_inverts_the_prefix() {
        let id = AccountId("acc_x".to_string());
        assert_eq!(inbox_key_account(&inbox_key(&id, 42)), Some(id));
        assert_eq!(inbox_key_account(&[0, 0]), None);
    }

    #[test]
    fn due_keys_sort_by_kind_then_time_then_subject_and_carry_their_parts() {
        use chrono::TimeZone;
        assert!(due_key(DueKind::Retry, 255, "b") < due_key(DueKind::Retry, 256, "a"));
        assert!(due_key(DueKind::Retry, 256, "a") < due_key(DueKind::Retry, 256, "b"));
        // One kind's entries are one range: a later kind sorts after every time.
        assert!(due_key(DueKind::Retry, u64::MAX, "z") < due_key(DueKind::Poll, 0, "a"));
        let key = due_key(DueKind::Outbox, 1_234, &DueKind::outbox_subject(77));
        assert_eq!(
            due_key_parts(&key),
            Some((DueKind::Outbox, 1_234, "00000000000000000077"))
        );
        assert_eq!(due_key_parts(&[DueKind::Poll.tag(), 1, 2]), None);
        assert_eq!(
            due_key_parts(&[0, 0, 0, 0, 0, 0, 0, 0, 0]),
            None,
            "no kind 0"
        );
        // Times before the epoch clamp to it, and stored millis read back as times.
        let before = Utc.with_ymd_and_hms(1960, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(due_millis(before), 0);
        let at = Utc.timestamp_millis_opt(1_700_000_000_123).unwrap();
        assert_eq!(due_time(due_millis(at)), Some(at));
        assert!(due_subject_key(DueKind::Retry, "acc") < due_subject_key(DueKind::Poll, ""));
        assert!(!DUE_MIGRATED.starts_with(&due_subject_key(DueKind::Retry, "")));
    }

    #[test]
    fn outbox_subjects_sort_like_alert_ids() {
        assert!(DueKind::outbox_subject(9) < DueKind::outbox_subject(10));
        assert!(DueKind::outbox_subject(255) < DueKind::outbox_subject(u64::MAX));
        assert_eq!(
            DueKind::outbox_id(&DueKind::outbox_subject(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(
            DueKind::from_tag(DueKind::Outbox.tag()),
            Some(DueKind::Outbox)
        );
        assert_eq!(DueKind::from_tag(0), None);
    }

    #[test]
    fn flag_history_keys_sort_newest_first_within_one_flag() {
        use crate::domain::flags::FlagName;
        use crate::domain::operations::Segment;
        let key = |market: &str| FlagKey {
            name: FlagName::AccountOpeningAsync,
            market: market.into(),
            segment: Segment::Company,
        };
        assert!(flag_history_key(&key("FR"), 9) < flag_history_key(&key("FR"), 8));
        assert!(inverted_seq(u64::MAX) < inverted_seq(0));
        // A market that makes one path start with another's cannot share its prefix.
        let long = key("FR/company/x");
        assert!(long.path().starts_with(&key("FR").path()));
        assert!(!flag_history_key(&long, 1).starts_with(&flag_history_prefix(&key("FR"))));
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff]), None);
    }
}
