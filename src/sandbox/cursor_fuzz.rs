//! Fuzz properties of the sandbox's `/transactions/sync` cursors (see
//! `crate::fuzz_support` for the short and long profiles): any text decodes without
//! panic and, when accepted, to a cursor within the log; every issued cursor decodes to
//! itself; any change to an issued cursor, or its use for another item or by another
//! sandbox, is refused (the HMAC tag is what stands between a client and arbitrary log
//! positions).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use proptest::prelude::*;

use super::{CursorCodec, CursorError, SyncCursor};
use crate::fuzz_support::{fuzz, mutated, mutations};

/// A cursor the bank could issue for a log of at least `high_water` entries.
fn issued() -> impl Strategy<Value = (SyncCursor, u64)> {
    let position = prop_oneof![any::<u64>(), 0u64..1000, Just(u64::MAX)];
    (
        position.clone(),
        position.clone(),
        position.clone(),
        position,
    )
        .prop_map(|(a, b, c, d)| {
            let mut v = [a, b, c, d];
            v.sort_unstable();
            (
                SyncCursor {
                    start: v[0],
                    pos: v[1],
                    high_water: v[2],
                },
                v[3],
            )
        })
}

fn accepted_is_within_the_log(cursor: &SyncCursor, log_len: u64) -> Result<(), TestCaseError> {
    prop_assert!(cursor.start <= cursor.pos);
    prop_assert!(cursor.pos <= cursor.high_water);
    prop_assert!(cursor.high_water <= log_len);
    Ok(())
}

#[test]
fn fuzz_arbitrary_text_never_decodes_to_a_cursor() {
    let text = prop_oneof![".{0,80}", "[A-Za-z0-9_-]{48}", "[A-Za-z0-9_=+/-]{0,64}",];
    let strategy = (any::<[u8; 32]>(), ".{0,24}", text, any::<u64>());
    fuzz(
        "cursor::arbitrary",
        1024,
        strategy,
        |(key, item, text, log_len)| {
            let decoded = CursorCodec::new(key).decode(&item, &text, log_len);
            if let Ok(cursor) = &decoded {
                accepted_is_within_the_log(cursor, log_len)?;
            }
            // A 96-bit tag: random text is never a cursor.
            prop_assert!(decoded.is_err(), "accepted random text as a cursor");
            Ok(())
        },
    );
}

#[test]
fn fuzz_every_issued_cursor_decodes_to_itself() {
    let strategy = (any::<[u8; 32]>(), ".{0,24}", issued());
    fuzz(
        "cursor::round_trip",
        512,
        strategy,
        |(key, item, (cursor, log_len))| {
            let codec = CursorCodec::new(key);
            let text = codec.encode(&item, cursor);
            prop_assert_eq!(text.len(), 48);
            prop_assert!(text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            prop_assert_eq!(codec.decode(&item, &text, log_len), Ok(cursor));
            // The log never shrinks: a cursor past its end was not issued by this bank.
            if cursor.high_water > 0 {
                prop_assert_eq!(
                    codec.decode(&item, &text, cursor.high_water - 1),
                    Err(CursorError::OutOfRange)
                );
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_changed_or_foreign_cursors_are_refused() {
    let strategy = (
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        (".{0,24}", ".{0,24}"),
        issued(),
        mutations(),
        any::<bool>(),
    );
    fuzz(
        "cursor::changed",
        512,
        strategy,
        |(key, other_key, (item, other_item), (cursor, log_len), mutations, decoded_bytes)| {
            let codec = CursorCodec::new(key);
            let text = codec.encode(&item, cursor);
            // Change the text as sent, or the decoded bytes (payload or tag) re-encoded.
            let changed = if decoded_bytes {
                let bytes = URL_SAFE_NO_PAD
                    .decode(&text)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                URL_SAFE_NO_PAD.encode(mutated(&bytes, &mutations))
            } else {
                String::from_utf8_lossy(&mutated(text.as_bytes(), &mutations)).into_owned()
            };
            let decoded = codec.decode(&item, &changed, log_len);
            if changed == text {
                prop_assert_eq!(decoded, Ok(cursor));
            } else {
                prop_assert!(decoded.is_err(), "accepted a changed cursor: {decoded:?}");
            }
            if other_item != item {
                prop_assert_eq!(
                    codec.decode(&other_item, &text, log_len),
                    Err(CursorError::Foreign)
                );
            }
            if other_key != key {
                prop_assert_eq!(
                    CursorCodec::new(other_key).decode(&item, &text, log_len),
                    Err(CursorError::Foreign)
                );
            }
            Ok(())
        },
    );
}
