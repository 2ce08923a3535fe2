//! `/transactions/sync` cursors: opaque to clients, self-describing to the bank.
//!
//! A cursor names a point in one item's change log: where the current pagination loop
//! started (`start`), how far it has paged (`pos`) and how long the log was when the
//! loop started (`high_water`). That is all the bank needs to serve the next page and to
//! notice, like Plaid, that data moved under a loop in progress. Cursors are
//! authenticated with a per-sandbox HMAC key bound to the item id, so a cursor from
//! another item, another sandbox process or a typo is refused instead of silently
//! resuming at a wrong position.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use subtle::ConstantTimeEq;

const PAYLOAD_LEN: usize = 24;
const TAG_LEN: usize = 12;

/// A decoded position in an item's change log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SyncCursor {
    /// Log position where the loop started.
    pub start: u64,
    /// Log position of the next entry to page.
    pub pos: u64,
    /// Log length when the loop started; the loop pages up to here.
    pub high_water: u64,
}

impl SyncCursor {
    /// A cursor at the end of a finished loop: the next call starts a new loop.
    pub fn settled(at: u64) -> Self {
        SyncCursor {
            start: at,
            pos: at,
            high_water: at,
        }
    }

    /// Whether this cursor came from a page that said `has_more`.
    pub fn is_mid_loop(&self) -> bool {
        self.pos < self.high_water
    }
}

/// Why a cursor string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CursorError {
    /// Not base64url or of the wrong length.
    #[error("cursor is not a cursor issued by this sandbox")]
    Undecodable,
    /// Authentication failed: another item's, another process's, or tampered.
    #[error("cursor was not issued for this item")]
    Foreign,
    /// Fields are inconsistent or point past the end of the log.
    #[error("cursor is out of range for this item")]
    OutOfRange,
}

/// Encodes and checks cursors with one sandbox's key.
pub(crate) struct CursorCodec {
    key: hmac::Key,
}

impl CursorCodec {
    /// A codec keyed with `key` (random per sandbox process).
    pub fn new(key: [u8; 32]) -> Self {
        CursorCodec {
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
        }
    }

    fn tag(&self, item_id: &str, payload: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(item_id.as_bytes());
        ctx.update(&[0]);
        ctx.update(payload);
        ctx.sign()
    }

    /// The opaque string for `cursor` on `item_id`.
    pub fn encode(&self, item_id: &str, cursor: SyncCursor) -> String {
        let mut bytes = Vec::with_capacity(PAYLOAD_LEN + TAG_LEN);
        bytes.extend_from_slice(&cursor.start.to_be_bytes());
        bytes.extend_from_slice(&cursor.pos.to_be_bytes());
        bytes.extend_from_slice(&cursor.high_water.to_be_bytes());
        let tag = self.tag(item_id, &bytes);
        bytes.extend_from_slice(&tag.as_ref()[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Decodes `text` for `item_id` whose log currently holds `log_len` entries.
    pub fn decode(
        &self,
        item_id: &str,
        text: &str,
        log_len: u64,
    ) -> Result<SyncCursor, CursorError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| CursorError::Undecodable)?;
        if bytes.len() != PAYLOAD_LEN + TAG_LEN {
            return Err(CursorError::Undecodable);
        }
        let (payload, tag) = bytes.split_at(PAYLOAD_LEN);
        let expected = self.tag(item_id, payload);
        // Constant-time: the tag is the only thing standing between a client and
        // arbitrary log positions.
        if !bool::from(expected.as_ref()[..TAG_LEN].ct_eq(tag)) {
            return Err(CursorError::Foreign);
        }
        let field = |i: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&payload[i * 8..i * 8 + 8]);
            u64::from_be_bytes(word)
        };
        let cursor = SyncCursor {
            start: field(0),
            pos: field(1),
            high_water: field(2),
        };
        if !(cursor.start <= cursor.pos
            && cursor.pos <= cursor.high_water
            && cursor.high_water <= log_len)
        {
            return Err(CursorError::OutOfRange);
        }
        Ok(cursor)
    }
}

#[cfg(test)]
#[path = "cursor_fuzz.rs"]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(k: u8) -> CursorCodec {
        CursorCodec::new([k; 32])
    }

    #[test]
    fn round_trips_and_is_url_safe() {
        let c = SyncCursor {
            start: 3,
            pos: 10,
            high_water: 20,
        };
        let text = codec(1).encode("item-a", c);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(codec(1).decode("item-a", &text, 20), Ok(c));
    }

    #[test]
    fn refuses_foreign_tampered_garbage_and_out_of_range() {
        let c = SyncCursor::settled(5);
        let text = codec(1).encode("item-a", c);
        assert_eq!(
            codec(1).decode("item-b", &text, 5),
            Err(CursorError::Foreign)
        );
        assert_eq!(
            codec(2).decode("item-a", &text, 5),
            Err(CursorError::Foreign)
        );
        let mut bytes = URL_SAFE_NO_PAD.decode(&text).unwrap();
        bytes[7] ^= 1;
        let tampered = URL_SAFE_NO_PAD.encode(bytes);
        assert_eq!(
            codec(1).decode("item-a", &tampered, 5),
            Err(CursorError::Foreign)
        );
        assert_eq!(
            codec(1).decode("item-a", "not a cursor!", 5),
            Err(CursorError::Undecodable)
        );
        assert_eq!(
            codec(1).decode("item-a", "abcd", 5),
            Err(CursorError::Undecodable)
        );
        // The log never shrinks, so a cursor past its end was never issued by this bank.
        assert_eq!(
            codec(1).decode("item-a", &text, 4),
            Err(CursorError::OutOfRange)
        );
    }
}
