//! One sync of a linked Stripe account: what Stripe's events, list endpoints and Events
//! API mean for the local copy, and the local changes pushed back. A sync runs four
//! phases, each committing as it goes:
//!
//! 1. **Events** from the account's inbox (the webhooks acknowledged since the last
//!    sync) are applied through the out-of-order guard and consumed in one commit.
//! 2. **Pushes** of the account's pending local changes (`stripe_push`): each decided
//!    (pushed, held as a conflict, refused) in its own commit.
//! 3. **Backfill** of every mirrored type whose backfill has not completed
//!    (`stripe_backfill`): its list endpoint, newest first, 100 at a time, in `created`
//!    windows that split when dense and are listed several at once; each round commits
//!    its objects with every window's cursor, so a restart or a rate limit resumes where
//!    each window stood, never from the start. A type's objects become visible when its
//!    last page commits.
//! 4. **Catch-up** from `GET /v1/events` since the last catch-up, when acctor has just
//!    started, the previous sync failed, or the last catch-up is older than
//!    `stripe.catch_up_interval`: events whose webhook never arrived are applied the
//!    same way. An account not caught up within Stripe's 30-day event retention has its
//!    types backfilled again instead.
//!
//! The guard. Every stored object carries the stamp of what wrote it (an event's
//! `created` and id, or the second Stripe answered a listing or retrieve). A sync
//! groups its events by object and applies the newest; an older one than the stored
//! stamp, or the same event again, changes nothing. Two different events in the same
//! second are not guessed at for the types in the account's `refetch_on_tie` (all of
//! them by default; Stripe's event ids carry no order): the object is re-fetched
//! and what Stripe says now is stored. A `*.deleted` event leaves a tombstone, so a
//! late, older event cannot bring the object back; a re-fetch answering
//! `resource_missing` deletes too. The store checks the guard again inside each commit.
//!
//! Every call goes through [`call`]: a 429 waits out `Retry-After` (or backs off), a
//! 5xx backs off, up to `stripe.call_attempts` tries; the account's request budget is
//! the client's (shared with everything else that calls Stripe for the account).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::{SyncError, SyncProgress, SyncReport};
use crate::clock::Clock;
use crate::domain::stripe::{
    Guard, ObjectType, ObjectWrite, OnTie, Stamp, StripeCredentials, StripeLink, StripeState,
    TypeBackfill,
};
use crate::domain::stripe_push::AuditNote;
use crate::domain::{Account, InboxEntry, SyncOutcome};
use crate::providers::stripe::wire::Event;
use crate::providers::stripe::{Fetched, StripeAccess, StripeApi};
use crate::providers::{ErrorClass, ProviderError};
use crate::store::{ObjectCommit, ObjectReceipt, Store, StoreError, SyncFinish};

/// Events are listed from this long before the last catch-up: events appear in the
/// Events API a moment after their `created`, and clocks differ by a little.
const CATCH_UP_OVERLAP_SECS: i64 = 60;

/// Tunables of a Stripe sync.
#[derive(Clone, Debug)]
pub struct StripeParams {
    /// Objects per list page (1..=100).
    pub page_size: u32,
    /// Catch up from the Events API when the last catch-up is older than this.
    pub catch_up_interval: Duration,
    /// How long Stripe keeps events.
    pub event_retention: Duration,
    /// Tries of one call that was rate limited or failed transiently.
    pub call_attempts: u32,
    /// First backoff between such tries (without a `Retry-After`).
    pub retry_delay: Duration,
    /// Longest backoff between such tries.
    pub max_retry_delay: Duration,
    /// How often every type is listed again and compared (drift check).
    pub drift_interval: Duration,
    /// Windows of one type a backfill lists at once.
    pub backfill_parallel: usize,
}

impl Default for StripeParams {
    fn default() -> Self {
        StripeParams {
            page_size: 100,
            catch_up_interval: Duration::from_secs(15 * 60),
            event_retention: Duration::from_secs(30 * 24 * 3600),
            call_attempts: 6,
            retry_delay: Duration::from_millis(200),
            max_retry_delay: Duration::from_secs(10),
            drift_interval: Duration::from_secs(24 * 3600),
            backfill_parallel: 4,
        }
    }
}

/// What a Stripe sync needs.
pub struct StripeEnv<'a> {
    /// Stripe (or the sandbox, or a script).
    pub api: &'a dyn StripeApi,
    /// The store.
    pub store: &'a Arc<dyn Store>,
    /// Tunables.
    pub params: &'a StripeParams,
    /// Live progress for status queries.
    pub progress: &'a SyncProgress,
    /// Where "now" comes from when Stripe does not say.
    pub clock: &'a dyn Clock,
    /// Catch up from the Events API whatever the interval says (the first sync since
    /// acctor started, or after a failed one).
    pub force_catch_up: bool,
    /// Where the mirror's counters go (events, re-fetches, catch-ups, drift).
    pub metrics: Option<&'a crate::metrics::Metrics>,
}

/// What a sync did, for its outcome.
#[derive(Default)]
struct Tally {
    backfilled: u64,
    applied: u64,
    deleted: u64,
    pages: u64,
}

impl Tally {
    fn add(&mut self, receipt: ObjectReceipt) {
        self.applied += receipt.applied;
    }
}

/// A linked Stripe account as a sync sees it.
struct Target<'a> {
    account: &'a Account,
    credentials: StripeCredentials,
    link: StripeLink,
}

impl Target<'_> {
    fn access(&self) -> StripeAccess<'_> {
        StripeAccess {
            api_key: &self.credentials.api_key,
            account: &self.account.item_id,
            connect: self.link.connect,
            livemode: self.link.livemode,
        }
    }
}

/// The settings of an account linked before its type list was stored: everything.
pub fn default_link(livemode: bool) -> StripeLink {
    StripeLink {
        types: ObjectType::ALL.to_vec(),
        refetch_on_tie: ObjectType::REFETCH_ON_TIE.to_vec(),
        connect: false,
        livemode,
    }
}

/// One sync of `account`: the events of `entries` (consumed as `consumed`), then any
/// backfill left, then a catch-up when one is due. See the module docs.
pub async fn run_sync(
    env: &StripeEnv<'_>,
    account: &Account,
    entries: &[InboxEntry],
    consumed: Vec<u64>,
) -> Result<SyncReport, SyncError> {
    let started_at = env.clock.now();
    let credentials = StripeCredentials::from_token(&account.access_token).ok_or_else(|| {
        ProviderError::Decode("the account's stored Stripe credentials cannot be read".into())
    })?;
    let target = Target {
        account,
        credentials,
        link: account
            .stripe
            .clone()
            .unwrap_or_else(|| default_link(false)),
    };
    let mut state = read_state(env, account).await?;
    let before = state.clone();
    let mut tally = Tally::default();
    plan_backfills(env, &target, &mut state, started_at.timestamp());

    let events: Vec<Event> = entries
        .iter()
        .filter_map(|entry| match serde_json::from_value::<Event>(entry.body.clone()) {
            Ok(event) => Some(event),
            Err(error) => {
                tracing::warn!(account_id = %account.id, seq = entry.seq, %error, "inbox entry is not a stripe event, consumed unread");
                None
            }
        })
        .collect();
    if !events.is_empty() || !consumed.is_empty() {
        let writes = apply_events(env, &target, &mut state, events, &mut tally).await?;
        let receipt = commit(env, &target, writes, &state, consumed, None).await?;
        tally.add(receipt);
    }

    push::push_pending(env, &target, &state).await?;

    for object_type in target.link.types.clone() {
        backfill::backfill_type(env, &target, object_type, &mut state, &mut tally).await?;
    }

    let now = env.clock.now().timestamp();
    let interval = i64::try_from(env.params.catch_up_interval.as_secs()).unwrap_or(i64::MAX);
    let stale = state
        .events_checked_through
        .is_none_or(|through| now.saturating_sub(through) >= interval);
    if env.force_catch_up || stale {
        catch_up(env, &target, &mut state, &mut tally).await?;
    }
    if state
        .next_drift_check
        .is_some_and(|due| env.clock.now() >= due)
    {
        drift::check(env, &target, &mut state).await?;
    }

    let finished_at = env.clock.now();
    let outcome = SyncOutcome::Committed {
        added: tally.backfilled,
        modified: tally.applied,
        removed: tally.deleted,
        pages: tally.pages,
        fallback: false,
        request_id: None,
    };
    let finish = SyncFinish {
        cursor: state
            .last_event
            .as_ref()
            .map_or_else(|| "backfilled".to_owned(), |mark| mark.id.clone()),
        outcome: outcome.clone(),
        started_at,
        finished_at,
    };
    commit(env, &target, Vec::new(), &state, Vec::new(), Some(finish)).await?;
    if let Some(metrics) = env.metrics {
        for (outcome, now, then) in [
            ("applied", state.events_applied, before.events_applied),
            ("stale", state.events_stale, before.events_stale),
            ("refetched", state.refetches, before.refetches),
            ("caught_up", state.catch_ups, before.catch_ups),
        ] {
            metrics.stripe_mirror(outcome, "", now.saturating_sub(then));
        }
    }
    Ok(SyncReport {
        outcome,
        follow_up: false,
    })
}

/// A backfill for every mirrored type that has none, and for all of them again when the
/// last catch-up is older than Stripe keeps events (what happened in between can no
/// longer be read as events).
fn plan_backfills(env: &StripeEnv<'_>, target: &Target<'_>, state: &mut StripeState, now: i64) {
    let retention = i64::try_from(env.params.event_retention.as_secs()).unwrap_or(i64::MAX);
    let expired = state
        .events_checked_through
        .is_some_and(|through| now.saturating_sub(through) > retention);
    if expired {
        tracing::warn!(account_id = %target.account.id, "last catch-up is older than stripe keeps events, backfilling again");
    }
    for object_type in &target.link.types {
        if expired || !state.backfill.contains_key(object_type) {
            state.backfill.insert(*object_type, TypeBackfill::new(now));
        }
    }
    if expired || state.events_checked_through.is_none() {
        // Whatever happened before now is in the backfill's listings.
        state.events_checked_through = Some(now);
    }
}

async fn read_state(env: &StripeEnv<'_>, account: &Account) -> Result<StripeState, SyncError> {
    let store = env.store.clone();
    let id = account.id.clone();
    let state = tokio::task::spawn_blocking(move || store.stripe_state(&id))
        .await
        .map_err(|e| StoreError::Io(format!("store task failed: {e}")))??;
    Ok(state.unwrap_or_default())
}

async fn stamps_of(
    env: &StripeEnv<'_>,
    account: &Account,
    keys: Vec<(ObjectType, String)>,
) -> Result<Vec<Option<Stamp>>, SyncError> {
    let store = env.store.clone();
    let id = account.id.clone();
    let stamps = tokio::task::spawn_blocking(move || store.object_stamps(&id, &keys))
        .await
        .map_err(|e| StoreError::Io(format!("store task failed: {e}")))??;
    Ok(stamps)
}

/// Commits off the async workers (a large commit holds sled's transaction lock).
async fn commit(
    env: &StripeEnv<'_>,
    target: &Target<'_>,
    writes: Vec<ObjectWrite>,
    state: &StripeState,
    consumed: Vec<u64>,
    finish: Option<SyncFinish>,
) -> Result<ObjectReceipt, SyncError> {
    commit_step(
        env,
        ObjectCommit {
            account_id: target.account.id.clone(),
            writes,
            state: state.clone(),
            consumed,
            finish,
            pushes: Vec::new(),
            audit: Vec::new(),
        },
    )
    .await
}

/// Commits one step off the async workers.
async fn commit_step(
    env: &StripeEnv<'_>,
    commit: ObjectCommit,
) -> Result<ObjectReceipt, SyncError> {
    let store = env.store.clone();
    let receipt = tokio::task::spawn_blocking(move || store.commit_objects(&commit))
        .await
        .map_err(|e| StoreError::Io(format!("commit task failed: {e}")))??;
    Ok(receipt)
}

/// One call to Stripe, tried again while it is rate limited (waiting out `Retry-After`
/// when Stripe sent one) or failed transiently, up to `call_attempts` tries.
pub async fn call<T, F, Fut>(
    params: &StripeParams,
    what: &str,
    mut attempt_call: F,
) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    let mut attempt = 1u32;
    loop {
        let error = match attempt_call().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let backoff = || {
            crate::backoff::backoff_delay(
                params.retry_delay,
                params.max_retry_delay,
                attempt,
                &mut rand::thread_rng(),
            )
        };
        let wait = match error.class() {
            ErrorClass::RateLimited { retry_after } => retry_after.unwrap_or_else(backoff),
            ErrorClass::Transient => backoff(),
            _ => return Err(error),
        };
        if attempt >= params.call_attempts {
            return Err(error);
        }
        tracing::debug!(
            call = what,
            attempt,
            code = error.code(),
            wait_ms = wait.as_millis() as u64,
            "stripe call failed, trying again"
        );
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

/// The second to stamp what Stripe answered with: its own time when it said.
fn fetched_at<T>(env: &StripeEnv<'_>, fetched: &Fetched<T>) -> i64 {
    fetched
        .server_time
        .unwrap_or_else(|| env.clock.now().timestamp())
}

/// The write an event makes: its object, or a tombstone.
fn event_write(object_type: ObjectType, event: &Event, on_tie: OnTie) -> ObjectWrite {
    ObjectWrite {
        object_type,
        id: event.object_id().unwrap_or_default().to_owned(),
        body: (!event.deletes()).then(|| event.data.object.clone()),
        stamp: Stamp::event(event.id.clone(), event.created),
        on_tie,
        note: event_note(event),
    }
}

/// What an event says in the audit trail: its type, and its id (with the change of
/// acctor's it echoes, when one of acctor's pushes caused it).
fn event_note(event: &Event) -> AuditNote {
    let source = match event
        .request
        .as_ref()
        .and_then(|r| r.idempotency_key.as_deref())
    {
        Some(key) if key.starts_with("acctor-") => format!("event {} (echo of {key})", event.id),
        _ => format!("event {}", event.id),
    };
    AuditNote::inbound(event.kind.clone(), source)
}

/// The writes `events` make, newest per object, with the guard's verdicts taken and
/// the doubtful objects re-fetched. Updates the state's counters and newest event.
async fn apply_events(
    env: &StripeEnv<'_>,
    target: &Target<'_>,
    state: &mut StripeState,
    mut events: Vec<Event>,
    tally: &mut Tally,
) -> Result<Vec<ObjectWrite>, SyncError> {
    events.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    let mut by_object: BTreeMap<(ObjectType, String), Vec<Event>> = BTreeMap::new();
    for event in events {
        if state
            .last_event
            .as_ref()
            .is_none_or(|mark| (event.created, &event.id) > (mark.created, &mark.id))
        {
            state.last_event = Some(crate::domain::stripe::EventMark {
                id: event.id.clone(),
                created: event.created,
            });
        }
        let object_type = event
            .object_name()
            .and_then(ObjectType::of_object)
            .filter(|t| target.link.types.contains(t));
        // Not a mirrored object (an account.updated, a balance event…): consumed.
        if let (Some(object_type), Some(id)) = (object_type, event.object_id()) {
            let key = (object_type, id.to_owned());
            by_object.entry(key).or_default().push(event);
        }
    }
    let keys: Vec<(ObjectType, String)> = by_object.keys().cloned().collect();
    let stamps = stamps_of(env, target.account, keys).await?;
    let mut writes = Vec::new();
    let mut refetch = Vec::new();
    for (((object_type, id), events), stored) in by_object.into_iter().zip(stamps) {
        let Some(newest) = newest_of(&events) else {
            continue;
        };
        let in_batch_tie = events
            .iter()
            .any(|e| e.created == newest.created && e.id != newest.id);
        let careful = target.link.refetch_on_tie.contains(&object_type);
        let verdict = Guard::check(
            &Stamp::event(newest.id.clone(), newest.created),
            stored.as_ref(),
        );
        state.events_applied += 1;
        state.events_stale += events.len() as u64 - 1;
        match verdict {
            Guard::Older | Guard::Same => {
                state.events_applied -= 1;
                state.events_stale += 1;
            }
            Guard::Newer if !(careful && in_batch_tie) => {
                writes.push(event_write(object_type, newest, OnTie::Skip));
            }
            // The echo of acctor's own push, whose answer is what is stored.
            Guard::Tie if is_stored_echo(env, target, object_type, &id, newest).await? => {
                state.events_applied -= 1;
                state.echoes += 1;
            }
            Guard::Tie if !careful => {
                writes.push(event_write(object_type, newest, OnTie::Apply));
            }
            // Two writers in one second of a type where order matters: ask Stripe.
            _ => refetch.push((
                object_type,
                id,
                newest.created.max(stored.map_or(0, |s| s.at)),
            )),
        }
        if newest.deletes() {
            tally.deleted += 1;
        }
    }
    for (object_type, id, not_before) in refetch {
        let fetched = call(env.params, "retrieve", || {
            env.api.retrieve(target.access(), object_type, &id)
        })
        .await?;
        state.refetches += 1;
        // What Stripe says now is at least as new as anything stored: stamped no older,
        // and applied on a tie.
        let at = fetched_at(env, &fetched).max(not_before);
        let what = if fetched.value.is_some() {
            "retrieved"
        } else {
            "removed (not at Stripe)"
        };
        writes.push(ObjectWrite {
            object_type,
            id,
            body: fetched.value,
            stamp: Stamp { at, event_id: None },
            on_tie: OnTie::Apply,
            note: AuditNote::inbound(what, "re-fetch after a same-second tie"),
        });
    }
    Ok(writes)
}

/// Whether `event` was caused by one of acctor's own pushes to this account and carries
/// exactly the object stored (the push's answer): applying it would change nothing,
/// and re-fetching for the tie would cost a request to learn the same.
async fn is_stored_echo(
    env: &StripeEnv<'_>,
    target: &Target<'_>,
    object_type: ObjectType,
    id: &str,
    event: &Event,
) -> Result<bool, SyncError> {
    let own = event
        .request
        .as_ref()
        .and_then(|r| r.idempotency_key.as_deref())
        .and_then(|key| crate::domain::stripe_push::own_push(&target.account.id, key))
        .is_some();
    if !own || event.deletes() {
        return Ok(false);
    }
    let store = env.store.clone();
    let account = target.account.id.clone();
    let object_id = id.to_owned();
    let stored =
        tokio::task::spawn_blocking(move || store.get_object(&account, object_type, &object_id))
            .await
            .map_err(|e| StoreError::Io(format!("store task failed: {e}")))??;
    Ok(stored.and_then(|o| o.body).as_ref() == Some(&event.data.object))
}

/// The event that decides an object's state among `events` (sorted by created, id):
/// the newest, and within its second a deletion if there is one (a deletion is final).
fn newest_of(events: &[Event]) -> Option<&Event> {
    let newest = events.last()?;
    Some(
        events
            .iter()
            .rev()
            .take_while(|e| e.created == newest.created)
            .find(|e| e.deletes())
            .unwrap_or(newest),
    )
}

/// Reads the Events API from the last catch-up on, applying each page as it comes.
async fn catch_up(
    env: &StripeEnv<'_>,
    target: &Target<'_>,
    state: &mut StripeState,
    tally: &mut Tally,
) -> Result<(), SyncError> {
    let since = state
        .events_checked_through
        .unwrap_or_else(|| env.clock.now().timestamp())
        .saturating_sub(CATCH_UP_OVERLAP_SECS);
    let mut starting_after: Option<String> = None;
    let mut listed_at = None;
    loop {
        let after = starting_after.clone();
        let page = call(env.params, "events", || {
            env.api.events(
                target.access(),
                since,
                after.as_deref(),
                env.params.page_size,
            )
        })
        .await?;
        listed_at.get_or_insert(fetched_at(env, &page));
        tally.pages += 1;
        env.progress.page(page.value.data.len());
        let has_more = page.value.has_more;
        starting_after = page.value.data.last().map(|e| e.id.clone());
        let writes = apply_events(env, target, state, page.value.data, tally).await?;
        if !has_more || starting_after.is_none() {
            state.events_checked_through = listed_at;
            state.catch_ups += 1;
            let receipt = commit(env, target, writes, state, Vec::new(), None).await?;
            tally.add(receipt);
            return Ok(());
        }
        let receipt = commit(env, target, writes, state, Vec::new(), None).await?;
        tally.add(receipt);
    }
}

#[path = "stripe_backfill.rs"]
mod backfill;

#[path = "stripe_drift.rs"]
mod drift;

#[path = "stripe_push.rs"]
mod push;

#[cfg(test)]
#[path = "stripe_tests.rs"]
mod tests;
