//! Local changes to a linked Stripe account's catalogue (products and prices), queued
//! durably and pushed to Stripe by the account's actor, and the audit trail every
//! mirrored object keeps of its changes in both directions.
//!
//! A change ([`Push`]) is written locally first: it gets the account's next number and
//! the version of the object it was based on (the mirror's state when the change was
//! asked for, or the answer Stripe gave the change before it in the queue). The actor
//! pushes the account's pending changes in order, one object's changes one after the
//! other, each with an `Idempotency-Key` derived from its number (and the number of
//! times it was sent afresh), so a retry after a lost answer never applies it twice.
//!
//! Before an update is sent, Stripe's current object is retrieved and compared with the
//! change's base: if someone else changed the object since, the change is not sent but
//! held as a `conflict` with both versions, until a human retries it against Stripe's
//! version or discards it. Stripe has no conditional update, so a change made at Stripe
//! between that retrieve and the write (milliseconds) is the one case not caught.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::stripe::ObjectType;
use super::AccountId;

/// What a change does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PushAction {
    /// Creates the object (`POST /v1/{type}`).
    Create,
    /// Updates some of its fields (`POST /v1/{type}/{id}`).
    Update,
    /// Archives it (`active=false`), the catalogue's way of retiring an object that
    /// prices, subscriptions or invoices may still refer to.
    Archive,
}

impl PushAction {
    /// The action's name.
    pub fn as_str(self) -> &'static str {
        match self {
            PushAction::Create => "create",
            PushAction::Update => "update",
            PushAction::Archive => "archive",
        }
    }

    /// Parses a name.
    pub fn parse(name: &str) -> Option<PushAction> {
        [PushAction::Create, PushAction::Update, PushAction::Archive]
            .into_iter()
            .find(|a| a.as_str() == name)
    }
}

/// Where a change stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PushStatus {
    /// Queued, not yet confirmed by Stripe (it may have been sent, and its answer lost).
    Pending,
    /// Stripe applied it.
    Pushed,
    /// Not sent: the object changed at Stripe after the change's base. Waits for a
    /// human; later changes to the same object wait behind it.
    Conflict,
    /// Stripe refused it (an invalid parameter, a missing object). Waits for a human,
    /// like a conflict.
    Failed,
    /// A human dropped it.
    Discarded,
}

impl PushStatus {
    /// Every status.
    pub const ALL: [PushStatus; 5] = [
        PushStatus::Pending,
        PushStatus::Pushed,
        PushStatus::Conflict,
        PushStatus::Failed,
        PushStatus::Discarded,
    ];

    /// The status's name.
    pub fn as_str(self) -> &'static str {
        match self {
            PushStatus::Pending => "pending",
            PushStatus::Pushed => "pushed",
            PushStatus::Conflict => "conflict",
            PushStatus::Failed => "failed",
            PushStatus::Discarded => "discarded",
        }
    }

    /// Parses a name.
    pub fn parse(name: &str) -> Option<PushStatus> {
        PushStatus::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether the change still needs something: pushing, or a human.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            PushStatus::Pending | PushStatus::Conflict | PushStatus::Failed
        )
    }

    /// Whether a human can resolve it (retry or discard).
    pub fn is_held(self) -> bool {
        matches!(self, PushStatus::Conflict | PushStatus::Failed)
    }
}

/// One local change to a Stripe object, and its fate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Push {
    /// The account.
    pub account_id: AccountId,
    /// The change's number in the account's queue (1, 2, …).
    pub seq: u64,
    /// `products` or `prices`.
    pub object_type: ObjectType,
    /// Stripe's id: known for updates and archives, and for a create once pushed.
    pub object_id: Option<String>,
    /// What it does.
    pub action: PushAction,
    /// Stripe's parameters, as sent (`metadata` and `recurring` nested).
    pub params: Map<String, Value>,
    /// The mirror's version of the object the change was based on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_version: Option<u64>,
    /// The object as the change expects to find it at Stripe. `None` for a create, and
    /// for a change queued behind another change of the same object (`after`), whose
    /// answer becomes this one's base when it is pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Value>,
    /// The earlier change of the same object this one was queued behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// Where it stands.
    pub status: PushStatus,
    /// Tries that failed without an answer from Stripe (outages, rate limits).
    pub attempts: u32,
    /// Times it was sent afresh after a human's retry: part of its idempotency key, so
    /// a retried change is a new request rather than a replay of the refused one.
    pub generation: u32,
    /// The last failure, or why it is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When its write was first sent in its current generation: from then on its answer
    /// may have been lost, so it is sent again under the same key (Stripe replays the
    /// first answer) rather than checked for conflicts, which its own write would fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
    /// When Stripe applied it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_at: Option<DateTime<Utc>>,
    /// Stripe's answer: the object after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// When held as a conflict: the object as Stripe has it now (`None` there: Stripe
    /// no longer has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub theirs: Option<Value>,
    /// The `Idempotency-Key` the caller queued it with: the same key again answers with
    /// this change instead of queueing another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

impl Push {
    /// The change's id as the API shows it (`push_12`).
    pub fn id(&self) -> String {
        format!("push_{}", self.seq)
    }

    /// The `Idempotency-Key` its write carries: the account, the change and its
    /// generation. Stripe answers a repeat of the key with the first answer, so a write
    /// whose answer was lost is sent again without being applied twice.
    pub fn idempotency_key(&self) -> String {
        format!(
            "{}{}-{}-{}",
            KEY_PREFIX,
            self.account_id.as_str(),
            self.seq,
            self.generation
        )
    }
}

/// How every key acctor sends starts.
const KEY_PREFIX: &str = "acctor-";

/// The change an idempotency key belongs to, when acctor sent it for `account`: how an
/// event caused by one of acctor's own pushes (its echo) is recognised.
pub fn own_push(account: &AccountId, key: &str) -> Option<u64> {
    let rest = key
        .strip_prefix(KEY_PREFIX)?
        .strip_prefix(account.as_str())?
        .strip_prefix('-')?;
    let (seq, generation) = rest.split_once('-')?;
    generation.parse::<u32>().ok()?;
    seq.parse().ok()
}

/// A change as asked for, before the store numbers it.
#[derive(Clone, Debug, PartialEq)]
pub struct NewPush {
    /// The account.
    pub account_id: AccountId,
    /// `products` or `prices`.
    pub object_type: ObjectType,
    /// Stripe's id (updates and archives).
    pub object_id: Option<String>,
    /// What it does.
    pub action: PushAction,
    /// Stripe's parameters.
    pub params: Map<String, Value>,
    /// The version the caller saw, when it said: the change is refused (`stale_base`)
    /// if the mirror has moved on since.
    pub expected_version: Option<u64>,
    /// When it was asked for.
    pub at: DateTime<Utc>,
    /// The caller's `Idempotency-Key`, if it sent one.
    pub client_key: Option<String>,
}

impl NewPush {
    /// Whether `push` is this very change asked for again (the same key with the same
    /// object, action and parameters).
    pub fn is_repeat_of(&self, push: &Push) -> bool {
        self.object_type == push.object_type
            && self.object_id == push.object_id
            && self.action == push.action
            && self.params == push.params
    }
}

/// A human's answer to a held change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// Send it again, based on the object as Stripe has it now (a conflict), or as it
    /// was (a failure, perhaps after fixing what Stripe refused at Stripe).
    Retry,
    /// Drop it.
    Discard,
}

/// An account's push queue at a glance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushBacklog {
    /// Changes waiting to be pushed.
    pub pending: u64,
    /// When the oldest of them was queued.
    pub oldest_pending_at: Option<DateTime<Utc>>,
    /// Pending changes whose last try failed (Stripe unreachable, rate limited).
    pub retrying: u64,
    /// Changes held as conflicts.
    pub conflicts: u64,
    /// Changes Stripe refused.
    pub failed: u64,
    /// Changes pushed.
    pub pushed: u64,
    /// Changes discarded.
    pub discarded: u64,
    /// The newest failure among pending changes.
    pub last_error: Option<String>,
}

/// A page request over an account's changes, by number.
#[derive(Clone, Debug)]
pub struct PushQuery {
    /// The account.
    pub account_id: AccountId,
    /// Only changes with one of these statuses (all when empty).
    pub statuses: Vec<PushStatus>,
    /// Continue after this number.
    pub after: Option<u64>,
    /// At most this many (0 counts as 1).
    pub limit: usize,
}

/// Which way a change went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From Stripe to the local copy.
    Inbound,
    /// From acctor to Stripe.
    Outbound,
}

impl Direction {
    /// The direction's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// What an audit entry says, before the store dates and numbers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditNote {
    /// Which way.
    pub direction: Direction,
    /// What happened (`product.updated`, `listed`, `update pushed`, `conflict held`…).
    pub what: String,
    /// Where from (`event evt_…`, `backfill`, `push_3`, …).
    pub source: String,
    /// The local change it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<u64>,
}

impl AuditNote {
    /// An inbound note.
    pub fn inbound(what: impl Into<String>, source: impl Into<String>) -> AuditNote {
        AuditNote {
            direction: Direction::Inbound,
            what: what.into(),
            source: source.into(),
            push: None,
        }
    }

    /// An outbound note about change `push`.
    pub fn outbound(what: impl Into<String>, push: &Push) -> AuditNote {
        AuditNote {
            direction: Direction::Outbound,
            what: what.into(),
            source: push.id(),
            push: Some(push.seq),
        }
    }
}

/// One entry of an object's audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its number: entries of one object are in this order.
    pub seq: u64,
    /// The object's type.
    pub object_type: ObjectType,
    /// The object's id.
    pub object_id: String,
    /// When acctor recorded it.
    pub at: DateTime<Utc>,
    /// The mirror's version the change wrote, when it wrote one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// What, which way, from where.
    #[serde(flatten)]
    pub note: AuditNote,
}

/// A page of an object's audit trail, oldest first.
#[derive(Clone, Debug)]
pub struct AuditPage {
    /// The entries.
    pub entries: Vec<AuditEntry>,
    /// Continue after this number; `None` on the last page.
    pub next: Option<u64>,
}

/// Why a change cannot be queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueRefusal {
    /// The object is not in the mirror (or was deleted at Stripe).
    UnknownObject,
    /// The caller's `Idempotency-Key` already queued another change.
    KeyReused {
        /// The change it queued.
        seq: u64,
    },
    /// The caller's expected version is not the mirror's any more.
    StaleBase {
        /// The version the caller expected.
        expected: u64,
        /// The mirror's version now.
        current: u64,
    },
}

impl Push {
    /// A new change numbered `seq`, based on the mirror's `current` object (an update
    /// or archive needs one), or queued behind the newest open change of the same object
    /// among `open`.
    pub fn queued(
        new: &NewPush,
        seq: u64,
        current: Option<&super::stripe::StoredObject>,
        open: &[Push],
    ) -> Result<Push, QueueRefusal> {
        let (base_version, base, after) = match (&new.action, &new.object_id) {
            (PushAction::Create, _) | (_, None) => (None, None, None),
            (_, Some(id)) => {
                let current = current
                    .filter(|o| !o.is_deleted())
                    .ok_or(QueueRefusal::UnknownObject)?;
                if let Some(expected) = new.expected_version {
                    if expected != current.version {
                        return Err(QueueRefusal::StaleBase {
                            expected,
                            current: current.version,
                        });
                    }
                }
                let before = open
                    .iter()
                    .filter(|p| {
                        p.status.is_open()
                            && p.object_type == new.object_type
                            && p.object_id.as_deref() == Some(id.as_str())
                    })
                    .map(|p| p.seq)
                    .max();
                match before {
                    Some(seq) => (Some(current.version), None, Some(seq)),
                    None => (Some(current.version), current.body.clone(), None),
                }
            }
        };
        Ok(Push {
            account_id: new.account_id.clone(),
            seq,
            object_type: new.object_type,
            object_id: new.object_id.clone(),
            action: new.action,
            params: new.params.clone(),
            base_version,
            base,
            after,
            status: PushStatus::Pending,
            attempts: 0,
            generation: 0,
            last_error: None,
            created_at: new.at,
            updated_at: new.at,
            sent_at: None,
            pushed_at: None,
            result: None,
            theirs: None,
            client_key: new.client_key.clone(),
        })
    }

    /// The audit note of its queueing: the action and the fields it sets.
    pub fn queued_note(&self) -> AuditNote {
        let fields: Vec<&str> = self.params.keys().map(String::as_str).collect();
        AuditNote::outbound(
            format!("{} queued ({})", self.action.as_str(), fields.join(", ")),
            self,
        )
    }

    /// Applies a human's answer to this held change at `at`; the audit note, or why it
    /// cannot be applied.
    pub fn resolve(
        &mut self,
        resolution: Resolution,
        at: DateTime<Utc>,
    ) -> Result<AuditNote, String> {
        if !self.status.is_held() {
            return Err(format!(
                "{} is {}: only a change held as conflict or failed can be retried or discarded",
                self.id(),
                self.status.as_str()
            ));
        }
        let held = self.status;
        self.updated_at = at;
        match resolution {
            Resolution::Discard => {
                self.status = PushStatus::Discarded;
                Ok(AuditNote::outbound(
                    format!("discarded ({})", held.as_str()),
                    self,
                ))
            }
            Resolution::Retry => {
                if held == PushStatus::Conflict {
                    // Against the object as Stripe has it now.
                    self.base = self.theirs.take();
                    self.after = None;
                }
                self.status = PushStatus::Pending;
                self.generation += 1;
                self.sent_at = None;
                self.attempts = 0;
                self.last_error = None;
                Ok(AuditNote::outbound(
                    format!("retried after {}", held.as_str()),
                    self,
                ))
            }
        }
    }
}

impl PushBacklog {
    /// Counts one change in.
    pub fn add(&mut self, push: &Push) {
        match push.status {
            PushStatus::Pending => {
                self.pending += 1;
                if self.oldest_pending_at.is_none_or(|at| push.created_at < at) {
                    self.oldest_pending_at = Some(push.created_at);
                }
                if push.attempts > 0 {
                    self.retrying += 1;
                    if push.last_error.is_some() {
                        self.last_error.clone_from(&push.last_error);
                    }
                }
            }
            PushStatus::Pushed => self.pushed += 1,
            PushStatus::Conflict => self.conflicts += 1,
            PushStatus::Failed => self.failed += 1,
            PushStatus::Discarded => self.discarded += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(seq: u64, generation: u32) -> Push {
        Push {
            account_id: AccountId("acc-1".into()),
            seq,
            object_type: ObjectType::Products,
            object_id: None,
            action: PushAction::Create,
            params: Map::new(),
            base_version: None,
            base: None,
            after: None,
            status: PushStatus::Pending,
            attempts: 0,
            generation,
            last_error: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            sent_at: None,
            pushed_at: None,
            result: None,
            theirs: None,
            client_key: None,
        }
    }

    #[test]
    fn own_keys_name_their_change_and_no_one_elses() {
        let account = AccountId("acc-1".into());
        let key = push(12, 3).idempotency_key();
        assert_eq!(key, "acctor-acc-1-12-3");
        assert_eq!(own_push(&account, &key), Some(12));
        // Another account's key, a foreign key, a malformed one.
        assert_eq!(own_push(&AccountId("acc-2".into()), &key), None);
        assert_eq!(own_push(&AccountId("acc".into()), &key), None);
        assert_eq!(own_push(&account, "b7d0e7c2-uuid"), None);
        assert_eq!(own_push(&account, "acctor-acc-1-12"), None);
        assert_eq!(own_push(&account, "acctor-acc-1-x-0"), None);
    }

    #[test]
    fn held_and_open_statuses() {
        for status in PushStatus::ALL {
            assert_eq!(PushStatus::parse(status.as_str()), Some(status));
            assert_eq!(
                status.is_held(),
                matches!(status, PushStatus::Conflict | PushStatus::Failed)
            );
            assert_eq!(
                status.is_open(),
                status.is_held() || status == PushStatus::Pending
            );
        }
    }
}
