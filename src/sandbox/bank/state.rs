//! The bank's books: openings and their idempotency keys, issued cards, the controls,
//! the seeded random streams and the counters. Everything here is synchronous and runs
//! under the bank's one mutex, which is what makes an idempotency key exact: the check
//! for an earlier use of a key and the record of a new one happen in one critical
//! section, so two concurrent calls with one key can never both create.
//!
//! Nothing here awaits or sends: a transition returns the webhook event it causes and
//! the caller (the lifecycle task or a handler) delivers it once the lock is released.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use super::iban;
use super::settings::{BankFaults, MarketSettings, Outcome};
use super::stats::BankStats;
use crate::providers::bank::wire::{
    BankStatus, CardBody, IssuedCard, LegacyOpeningBody, OpeningAcceptedBody, OpeningRequest,
    OpeningStatusBody, WebhookBody, VIRTUAL_CARD,
};

/// The reason a market with `outcome: reject` (or a `reject_rate` draw) gives.
pub const MARKET_REJECT_REASON: &str = "application declined by the bank's compliance review";

/// ChaCha streams: one per purpose, so that injecting faults never changes the ids or
/// outcomes a seed produces.
const IDS_STREAM: u64 = 1;
const OUTCOMES_STREAM: u64 = 2;
const FAULTS_STREAM: u64 = 3;

/// One status change of an opening.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The status entered.
    pub status: BankStatus,
    /// When.
    pub at: DateTime<Utc>,
}

/// An opening as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpeningSnapshot {
    /// The bank's id of the opening.
    pub tracking_id: String,
    /// The idempotency key it was created with.
    pub request_id: String,
    /// Whether it came through the legacy synchronous API (which has no status
    /// endpoint and sends no webhooks).
    pub legacy: bool,
    /// The application.
    pub request: OpeningRequest,
    /// Its status.
    pub status: BankStatus,
    /// The account's IBAN, once completed.
    pub iban: Option<String>,
    /// The account's BIC, once completed.
    pub bic: Option<String>,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its status last changed.
    pub updated_at: DateTime<Utc>,
    /// Every status it went through, in order.
    pub history: Vec<Transition>,
}

/// An outcome forced by a test or the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForcedOutcome {
    /// Complete now, with a generated IBAN.
    Complete,
    /// Reject now.
    Reject {
        /// The reason to report (`None`: no reason, which the wire format allows).
        reason: Option<String>,
    },
}

/// Why the bank refused a call or a control.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BankError {
    /// The idempotency key was used before with a different body.
    #[error("idempotency key {0:?} was used with a different request")]
    KeyReused(String),
    /// No such opening (or no asynchronous one, for the status endpoint).
    #[error("no account opening {0}")]
    NotFound(String),
    /// The opening is decided already: a forced outcome cannot change it.
    #[error("account opening {tracking_id} is already {status}")]
    AlreadyFinal {
        /// The opening.
        tracking_id: String,
        /// Its final status.
        status: BankStatus,
    },
    /// A card for an account this customer does not hold (not opened, not completed,
    /// or someone else's).
    #[error("customer {customer_id} has no open account {iban}")]
    UnknownAccount {
        /// The customer asked for.
        customer_id: String,
        /// The IBAN asked for.
        iban: String,
    },
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
}

/// A webhook to send: a status change of an asynchronous opening, serialised once so
/// every copy and retry carries the same bytes and event id.
#[derive(Clone, Debug)]
pub(crate) struct WebhookEvent {
    pub tracking_id: String,
    pub body: Vec<u8>,
}

/// Which API an opening came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Async,
    Legacy,
}

struct Opening {
    tracking_id: String,
    request_id: String,
    kind: Kind,
    request: OpeningRequest,
    status: BankStatus,
    iban: Option<String>,
    bic: Option<String>,
    reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    history: Vec<Transition>,
    /// Wakes legacy callers waiting for the decision.
    decided: watch::Sender<BankStatus>,
    /// Fires when the last webhook queued for this opening is done: the next one waits
    /// for it, so one opening's webhooks go out in order.
    delivery_tail: Option<oneshot::Receiver<()>>,
}

impl Opening {
    fn snapshot(&self) -> OpeningSnapshot {
        OpeningSnapshot {
            tracking_id: self.tracking_id.clone(),
            request_id: self.request_id.clone(),
            legacy: self.kind == Kind::Legacy,
            request: self.request.clone(),
            status: self.status,
            iban: self.iban.clone(),
            bic: self.bic.clone(),
            reason: self.reason.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            history: self.history.clone(),
        }
    }

    fn enter(&mut self, status: BankStatus, now: DateTime<Utc>) {
        self.status = status;
        self.updated_at = now;
        self.history.push(Transition { status, at: now });
        // `send_replace` stores the value even with no receiver subscribed yet.
        self.decided.send_replace(status);
    }
}

/// What an idempotency key was first used with.
struct KeyRecord<T> {
    request: T,
    /// The opening it created (openings) or the card it issued (cards).
    result: String,
}

/// A new asynchronous opening, or the answer it got the first time.
pub(crate) enum Created {
    /// Created now: its `INITIATED` event and the market's step delay.
    New {
        accepted: OpeningAcceptedBody,
        initiated: WebhookEvent,
        delay_ms: u64,
    },
    /// A repeat of the key with the same body.
    Replay(OpeningAcceptedBody),
}

/// A legacy opening to wait for.
pub(crate) struct LegacyCreated {
    pub tracking_id: String,
    /// Created by this call: it must start the decision timer.
    pub fresh: bool,
    pub legacy_delay_ms: u64,
    pub decided: watch::Receiver<BankStatus>,
}

/// A card call's answer.
pub(crate) struct CardIssued {
    pub card: IssuedCard,
    /// Issued by this call (201) rather than replayed (200).
    pub fresh: bool,
}

/// A webhook held by the reorder fault.
pub(crate) struct HeldWebhook {
    pub url: String,
    pub body: Vec<u8>,
}

/// The bank's whole in-memory state.
pub(crate) struct BankState {
    markets: BTreeMap<String, MarketSettings>,
    pub faults: BankFaults,
    pub webhook_url: Option<String>,
    openings: HashMap<String, Opening>,
    /// Tracking ids in creation order, for listings.
    order: Vec<String>,
    async_keys: HashMap<String, KeyRecord<OpeningRequest>>,
    legacy_keys: HashMap<String, KeyRecord<OpeningRequest>>,
    cards: HashMap<String, KeyRecord<CardBody>>,
    issued: HashMap<String, IssuedCard>,
    /// IBAN → customer id of every completed account.
    accounts: HashMap<String, String>,
    held: Vec<HeldWebhook>,
    ids: ChaCha8Rng,
    outcomes: ChaCha8Rng,
    fault_rng: ChaCha8Rng,
    pub stats: BankStats,
}

fn rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Whether a draw at `rate` hits; a rate of 0 never draws, so turning a fault off does
/// not shift later draws.
fn draw(rate: f64, rng: &mut ChaCha8Rng) -> bool {
    rate > 0.0 && rng.gen::<f64>() < rate
}

/// Takes one from a `*_fail_next` style counter: whether it was armed.
pub(crate) fn take_one(counter: &mut u32) -> bool {
    if *counter == 0 {
        return false;
    }
    *counter -= 1;
    true
}

impl BankState {
    /// An empty bank whose ids and outcomes follow `seed`.
    pub fn new(seed: u64, webhook_url: Option<String>) -> BankState {
        BankState {
            markets: BTreeMap::new(),
            faults: BankFaults::default(),
            webhook_url,
            openings: HashMap::new(),
            order: Vec::new(),
            async_keys: HashMap::new(),
            legacy_keys: HashMap::new(),
            cards: HashMap::new(),
            issued: HashMap::new(),
            accounts: HashMap::new(),
            held: Vec::new(),
            ids: rng(seed, IDS_STREAM),
            outcomes: rng(seed, OUTCOMES_STREAM),
            fault_rng: rng(seed, FAULTS_STREAM),
            stats: BankStats::default(),
        }
    }

    /// The settings of `market` (the defaults until someone sets them).
    pub fn market(&self, market: &str) -> MarketSettings {
        self.markets.get(market).cloned().unwrap_or_default()
    }

    /// The settings of `market`, to change.
    pub fn market_mut(&mut self, market: &str) -> &mut MarketSettings {
        self.markets.entry(market.to_owned()).or_default()
    }

    /// Every market someone configured.
    pub fn markets(&self) -> BTreeMap<String, MarketSettings> {
        self.markets.clone()
    }

    fn new_id(&mut self, prefix: &str) -> String {
        format!("{prefix}_{:016x}", self.ids.gen::<u64>())
    }

    /// Draws whether a webhook is dropped and, if not, whether it is duplicated.
    /// A webhook of a silent market's opening is always dropped.
    pub fn draw_webhook_faults(&mut self, tracking_id: &str) -> (bool, bool) {
        let silent = self.openings.get(tracking_id).is_some_and(|o| {
            self.markets
                .get(&o.request.market)
                .is_some_and(|m| m.silent)
        });
        let dropped = silent || draw(self.faults.webhook_drop_rate, &mut self.fault_rng);
        let duplicated = !dropped && draw(self.faults.webhook_duplicate_rate, &mut self.fault_rng);
        (dropped, duplicated)
    }

    /// Draws whether a status call gets an injected 503.
    pub fn draw_status_error(&mut self) -> bool {
        draw(self.faults.status_error_rate, &mut self.fault_rng)
    }

    /// Holds a webhook for the reorder fault.
    pub fn hold(&mut self, webhook: HeldWebhook) {
        self.stats.webhooks_held += 1;
        self.held.push(webhook);
    }

    /// Takes every held webhook, shuffled by the fault stream.
    pub fn take_held(&mut self) -> Vec<HeldWebhook> {
        let mut held = std::mem::take(&mut self.held);
        held.shuffle(&mut self.fault_rng);
        held
    }

    /// Puts `tail` as the last webhook of `tracking_id` and returns the one it follows.
    pub fn replace_tail(
        &mut self,
        tracking_id: &str,
        tail: oneshot::Receiver<()>,
    ) -> Option<oneshot::Receiver<()>> {
        let opening = self.openings.get_mut(tracking_id)?;
        opening.delivery_tail.replace(tail)
    }

    fn insert(
        &mut self,
        key: &str,
        kind: Kind,
        request: OpeningRequest,
        now: DateTime<Utc>,
    ) -> String {
        let tracking_id = self.new_id("opn");
        let (decided, _) = watch::channel(BankStatus::Initiated);
        let opening = Opening {
            tracking_id: tracking_id.clone(),
            request_id: key.to_owned(),
            kind,
            request,
            status: BankStatus::Initiated,
            iban: None,
            bic: None,
            reason: None,
            created_at: now,
            updated_at: now,
            history: vec![Transition {
                status: BankStatus::Initiated,
                at: now,
            }],
            decided,
            delivery_tail: None,
        };
        self.openings.insert(tracking_id.clone(), opening);
        self.order.push(tracking_id.clone());
        tracking_id
    }

    /// `POST /v2/account-openings`: a new opening for a new key, the first answer again
    /// for a repeat of it with the same body.
    pub fn create_async(
        &mut self,
        key: &str,
        request: OpeningRequest,
        now: DateTime<Utc>,
    ) -> Result<Created, BankError> {
        self.stats.create_calls += 1;
        *self.stats.creates_by_key.entry(key.to_owned()).or_default() += 1;
        if let Some(record) = self.async_keys.get(key) {
            if record.request != request {
                self.stats.key_reuse_refusals += 1;
                return Err(BankError::KeyReused(key.to_owned()));
            }
            return Ok(Created::Replay(OpeningAcceptedBody {
                tracking_id: record.result.clone(),
                request_id: key.to_owned(),
                status: BankStatus::Initiated,
            }));
        }
        let delay_ms = self.market(&request.market).delay_ms;
        let tracking_id = self.insert(key, Kind::Async, request.clone(), now);
        self.async_keys.insert(
            key.to_owned(),
            KeyRecord {
                request,
                result: tracking_id.clone(),
            },
        );
        self.stats.openings += 1;
        let initiated = self
            .event(&tracking_id, now)
            .ok_or_else(|| BankError::NotFound(tracking_id.clone()))?;
        Ok(Created::New {
            accepted: OpeningAcceptedBody {
                tracking_id,
                request_id: key.to_owned(),
                status: BankStatus::Initiated,
            },
            initiated,
            delay_ms,
        })
    }

    /// `POST /v1/accounts`: the opening of `key` to wait for, created if new.
    pub fn create_legacy(
        &mut self,
        key: &str,
        request: OpeningRequest,
        now: DateTime<Utc>,
    ) -> Result<LegacyCreated, BankError> {
        self.stats.legacy_calls += 1;
        let legacy_delay_ms = self.market(&request.market).legacy_delay_ms;
        let (tracking_id, fresh) = match self.legacy_keys.get(key) {
            Some(record) if record.request != request => {
                self.stats.key_reuse_refusals += 1;
                return Err(BankError::KeyReused(key.to_owned()));
            }
            Some(record) => (record.result.clone(), false),
            None => {
                let tracking_id = self.insert(key, Kind::Legacy, request.clone(), now);
                self.legacy_keys.insert(
                    key.to_owned(),
                    KeyRecord {
                        request,
                        result: tracking_id.clone(),
                    },
                );
                self.stats.legacy_openings += 1;
                (tracking_id, true)
            }
        };
        let decided = self
            .openings
            .get(&tracking_id)
            .map(|opening| opening.decided.subscribe())
            .ok_or_else(|| BankError::NotFound(tracking_id.clone()))?;
        Ok(LegacyCreated {
            tracking_id,
            fresh,
            legacy_delay_ms,
            decided,
        })
    }

    /// The decision of a legacy opening, as `/v1/accounts` answers it.
    pub fn legacy_answer(&self, tracking_id: &str) -> Option<LegacyOpeningBody> {
        let opening = self.openings.get(tracking_id)?;
        Some(LegacyOpeningBody {
            status: opening.status,
            iban: opening.iban.clone(),
            bic: opening.bic.clone(),
            reason: opening.reason.clone(),
        })
    }

    /// `GET /v2/account-openings/{tracking_id}`.
    pub fn status(&self, tracking_id: &str) -> Result<OpeningStatusBody, BankError> {
        let opening = self
            .openings
            .get(tracking_id)
            .filter(|opening| opening.kind == Kind::Async)
            .ok_or_else(|| BankError::NotFound(tracking_id.to_owned()))?;
        Ok(OpeningStatusBody {
            tracking_id: opening.tracking_id.clone(),
            request_id: opening.request_id.clone(),
            status: opening.status,
            iban: opening.iban.clone(),
            bic: opening.bic.clone(),
            reason: opening.reason.clone(),
            updated_at: opening.updated_at,
        })
    }

    /// The webhook event for the current status of an asynchronous opening (`None` for
    /// a legacy one, which sends none).
    fn event(&mut self, tracking_id: &str, now: DateTime<Utc>) -> Option<WebhookEvent> {
        let event_id = self.new_id("evt");
        let opening = self
            .openings
            .get(tracking_id)
            .filter(|opening| opening.kind == Kind::Async)?;
        let body = WebhookBody {
            event_id,
            tracking_id: opening.tracking_id.clone(),
            request_id: opening.request_id.clone(),
            status: opening.status.as_str().to_owned(),
            iban: opening.iban.clone(),
            bic: opening.bic.clone(),
            reason: opening.reason.clone(),
            occurred_at: now,
            simulated: false,
        };
        // Infallible: plain strings, a bool and a timestamp always serialise.
        let body = serde_json::to_vec(&body).unwrap_or_default();
        Some(WebhookEvent {
            tracking_id: opening.tracking_id.clone(),
            body,
        })
    }

    /// `INITIATED` → `IN_PROGRESS`; `None` when the opening is past `INITIATED` (forced)
    /// or is legacy.
    pub fn advance(&mut self, tracking_id: &str, now: DateTime<Utc>) -> Option<WebhookEvent> {
        let opening = self.openings.get_mut(tracking_id)?;
        if opening.status != BankStatus::Initiated {
            return None;
        }
        opening.enter(BankStatus::InProgress, now);
        self.event(tracking_id, now)
    }

    /// Decides an opening by its market's settings; `None` when nothing was decided
    /// (already final, or a market that never decides) or the opening is legacy.
    pub fn decide(&mut self, tracking_id: &str, now: DateTime<Utc>) -> Option<WebhookEvent> {
        let opening = self.openings.get(tracking_id)?;
        if opening.status.is_terminal() {
            return None;
        }
        let market = self.market(&opening.request.market);
        let reject = match market.outcome {
            Outcome::Never => return None,
            Outcome::Reject => true,
            Outcome::Complete => draw(market.reject_rate.unwrap_or(0.0), &mut self.outcomes),
        };
        if reject {
            self.reject(tracking_id, Some(MARKET_REJECT_REASON.to_owned()), now);
        } else {
            self.complete(tracking_id, now);
        }
        self.event(tracking_id, now)
    }

    fn complete(&mut self, tracking_id: &str, now: DateTime<Utc>) {
        let Some(market) = self
            .openings
            .get(tracking_id)
            .map(|o| o.request.market.clone())
        else {
            return;
        };
        let (iban, bic) = iban::generate(&market, &mut self.ids);
        let Some(opening) = self.openings.get_mut(tracking_id) else {
            return;
        };
        opening.iban = Some(iban.clone());
        opening.bic = Some(bic);
        opening.enter(BankStatus::Completed, now);
        self.accounts
            .insert(iban, opening.request.customer_id.clone());
    }

    fn reject(&mut self, tracking_id: &str, reason: Option<String>, now: DateTime<Utc>) {
        if let Some(opening) = self.openings.get_mut(tracking_id) {
            opening.reason = reason;
            opening.enter(BankStatus::Rejected, now);
        }
    }

    /// Decides an opening now, whatever its market says.
    pub fn force(
        &mut self,
        tracking_id: &str,
        outcome: ForcedOutcome,
        now: DateTime<Utc>,
    ) -> Result<(OpeningSnapshot, Option<WebhookEvent>), BankError> {
        let opening = self
            .openings
            .get(tracking_id)
            .ok_or_else(|| BankError::NotFound(tracking_id.to_owned()))?;
        if opening.status.is_terminal() {
            return Err(BankError::AlreadyFinal {
                tracking_id: tracking_id.to_owned(),
                status: opening.status,
            });
        }
        match outcome {
            ForcedOutcome::Complete => self.complete(tracking_id, now),
            ForcedOutcome::Reject { reason } => self.reject(tracking_id, reason, now),
        }
        let event = self.event(tracking_id, now);
        let snapshot = self
            .opening(tracking_id)
            .ok_or_else(|| BankError::NotFound(tracking_id.to_owned()))?;
        Ok((snapshot, event))
    }

    /// One opening as the admin API shows it.
    pub fn opening(&self, tracking_id: &str) -> Option<OpeningSnapshot> {
        self.openings.get(tracking_id).map(Opening::snapshot)
    }

    /// Every opening, oldest first.
    pub fn openings(&self) -> Vec<OpeningSnapshot> {
        self.order
            .iter()
            .filter_map(|id| self.openings.get(id))
            .map(Opening::snapshot)
            .collect()
    }

    /// `POST /v1/cards`: a new card for a new key, the same card for a repeat of it.
    pub fn issue_card(&mut self, key: &str, request: CardBody) -> Result<CardIssued, BankError> {
        if let Some(record) = self.cards.get(key) {
            if record.request != request {
                self.stats.key_reuse_refusals += 1;
                return Err(BankError::KeyReused(key.to_owned()));
            }
            let card = self
                .issued
                .get(&record.result)
                .cloned()
                .ok_or_else(|| BankError::NotFound(record.result.clone()))?;
            return Ok(CardIssued { card, fresh: false });
        }
        if request.card_type != VIRTUAL_CARD {
            return Err(BankError::Invalid(format!(
                "type must be {VIRTUAL_CARD:?}, got {:?}",
                request.card_type
            )));
        }
        if self.accounts.get(&request.iban) != Some(&request.customer_id) {
            return Err(BankError::UnknownAccount {
                customer_id: request.customer_id,
                iban: request.iban,
            });
        }
        let card_id = self.new_id("card");
        let last4 = format!("{:04}", self.ids.gen_range(0..10_000u32));
        let card = IssuedCard {
            card_id: card_id.clone(),
            last4,
        };
        self.issued.insert(card_id.clone(), card.clone());
        *self
            .stats
            .cards_issued_by_customer
            .entry(request.customer_id.clone())
            .or_default() += 1;
        self.stats
            .card_ids_by_key
            .entry(key.to_owned())
            .or_default()
            .push(card_id.clone());
        self.stats.cards_issued += 1;
        self.cards.insert(
            key.to_owned(),
            KeyRecord {
                request,
                result: card_id,
            },
        );
        Ok(CardIssued { card, fresh: true })
    }
}
