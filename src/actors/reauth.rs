//! The needs-reauth state of an account, applied by its sync task before and after it
//! talks to the provider. What an event or an error means is the provider plugin's
//! call ([`WebhookAction`], [`ErrorClass`]); what acctor does about it is decided here:
//!
//! - Login required (a provider answer classified [`ErrorClass::LoginRequired`], or a
//!   webhook whose action is [`WebhookAction::LoginRequired`]) parks the account as
//!   needs-reauth: the mark is stored on the account (with the inbox position it was set
//!   at), its retry record goes, a `needs_reauth` incident is opened. A parked account is
//!   never synced, retried or polled.
//! - A [`WebhookAction::LoginRepaired`] newer than that position unparks it (and the
//!   same sync catches up everything kept in the inbox meanwhile); so does a relink
//!   (`POST /v1/accounts` again with a new token, see [`super::resume::relinked`]).
//! - A [`WebhookAction::DeadlineAnnounced`] records the deadline on the account and
//!   opens a warning incident; a login repair or a relink clears them.
//!
//! Every decision is taken on the account record as stored at the moment it is
//! written (`Store::update_login_state`), never written back from a copy read earlier:
//! a relink can land while a check runs, and it must not be lost.
//!
//! The decisions read the inbox entries the sync claimed, not messages: webhooks are
//! durable in the inbox before they are acknowledged, so a crash, a passivation or a
//! restart can never lose a login repair (the next activation finds it there). The
//! inbox keeps each event as the provider sent it; the account's provider plugin reads
//! it again here ([`crate::providers::Provider::action_of`]), exactly as the webhook
//! route read it on arrival.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::context::ActorContext;
use super::incidents::{open_incident, resolve_incidents};
use crate::domain::incidents::IncidentKind;
use crate::domain::{AccessToken, Account, AccountId, InboxEntry, NeedsReauth, PendingDeadline};
use crate::providers::{DeadlineKind, ErrorClass, WebhookAction};
use crate::store::StoreError;
use crate::sync::SyncError;

/// What the pre-sync check decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Go on with the sync (not parked, or just unparked).
    Proceed,
    /// Parked: do not call the provider.
    Parked {
        /// Whether this check parked it (a login-required webhook).
        newly_parked: bool,
    },
}

/// What an inbox entry says about the item's login state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginSignal {
    /// The user must log in again.
    Required {
        /// The provider's code for it.
        code: String,
        /// The error's request id, if the webhook carried one.
        request_id: Option<String>,
    },
    /// The user logged in again.
    Repaired,
}

/// One claimed inbox entry as its provider reads it.
#[derive(Clone, Debug)]
struct Read {
    seq: u64,
    action: WebhookAction,
}

/// The login signal of one webhook's action, if it carries one.
pub fn login_signal(action: &WebhookAction) -> Option<LoginSignal> {
    match action {
        WebhookAction::LoginRepaired => Some(LoginSignal::Repaired),
        WebhookAction::LoginRequired { code, request_id } => Some(LoginSignal::Required {
            code: code.clone(),
            request_id: request_id.clone(),
        }),
        _ => None,
    }
}

/// The deadline a webhook's action announces, and the kind of incident that warns of it.
pub fn deadline_of(
    action: &WebhookAction,
    now: DateTime<Utc>,
) -> Option<(IncidentKind, PendingDeadline)> {
    let WebhookAction::DeadlineAnnounced {
        kind,
        code,
        deadline,
        reason,
    } = action
    else {
        return None;
    };
    let incident = match kind {
        DeadlineKind::Expiration => IncidentKind::PendingExpiration,
        DeadlineKind::Disconnect => IncidentKind::PendingDisconnect,
    };
    let deadline = PendingDeadline {
        code: code.clone(),
        deadline: *deadline,
        reason: reason.clone(),
        since: now,
    };
    Some((incident, deadline))
}

/// Whether an action concerns the login state (the check has work to do).
fn concerns_login(action: &WebhookAction) -> bool {
    matches!(
        action,
        WebhookAction::LoginRequired { .. }
            | WebhookAction::LoginRepaired
            | WebhookAction::DeadlineAnnounced { .. }
    )
}

/// Whether a failed sync failed because the user must log in again.
pub fn is_login_required(error: &SyncError) -> bool {
    error.class() == Some(ErrorClass::LoginRequired)
}

/// The pre-sync check over the claimed inbox entries (in seq order). Writes what it
/// decides (park, unpark, deadlines, incidents) and makes it durable before answering.
///
/// `account` (as the sync read it) only serves the fast path: the decision itself is
/// taken on the record as stored at the moment of writing (see [`decide`]).
pub async fn check(
    ctx: &Arc<ActorContext>,
    account: &Account,
    entries: &[InboxEntry],
) -> Result<Check, StoreError> {
    // Each entry read by the plugin of the provider that sent it (a map lookup and a
    // look at a few fields of the body).
    let reads: Vec<Read> = entries
        .iter()
        .map(|entry| Read {
            seq: entry.seq,
            action: ctx
                .provider(entry.provider)
                .action_of(&entry.kind, &entry.body),
        })
        .collect();
    let interesting = reads.iter().any(|read| concerns_login(&read.action));
    if account.needs_reauth.is_none() && !interesting {
        // The common case costs nothing: a plain data webhook, not parked.
        return Ok(Check::Proceed);
    }
    let task_ctx = ctx.clone();
    let id = account.id.clone();
    let (check, wrote) = tokio::task::spawn_blocking(move || decide(&task_ctx, &id, &reads))
        .await
        .map_err(|e| StoreError::Io(format!("reauth check task failed: {e}")))??;
    if wrote {
        ctx.store.durable().await?;
    }
    Ok(check)
}

/// What a check changes, computed from one version of the account record.
#[derive(Debug, Default)]
struct Plan {
    check: Option<Check>,
    /// `Some(mark)`: write `mark` (a `None` mark unparks).
    needs_reauth: Option<Option<NeedsReauth>>,
    /// `Some(deadline)`: write `deadline` (a `None` deadline clears it).
    deadline: Option<Option<PendingDeadline>>,
    /// `Some(seq)`: login signals up to `seq` were acted on (an unpark).
    seen_through: Option<u64>,
    /// Incidents resolved, then incidents opened (kind, details).
    resolve: Vec<IncidentKind>,
    open: Vec<(IncidentKind, serde_json::Value)>,
    transition: Option<Transition>,
}

/// What happened to the mark, for the log.
#[derive(Clone, Copy, Debug)]
enum Transition {
    Repaired { seq: u64 },
    ParkedByWebhook { seq: u64 },
    ParkedAgainAfterRelink { seq: u64 },
    UnparkedByRelink,
}

impl Plan {
    fn park(&mut self, code: &str, request_id: Option<String>, after_seq: u64, now: DateTime<Utc>) {
        let (mark, details) = parked_mark(code, request_id, "webhook", after_seq, now);
        self.needs_reauth = Some(Some(mark));
        self.open.push((IncidentKind::NeedsReauth, details));
        self.check = Some(Check::Parked { newly_parked: true });
    }

    /// Applies the plan's fields to `account`; whether there was anything to write.
    fn apply(&self, account: &mut Account) -> bool {
        if let Some(mark) = &self.needs_reauth {
            account.needs_reauth = mark.clone();
        }
        if let Some(deadline) = &self.deadline {
            account.pending_deadline = deadline.clone();
        }
        let raise_seen = self
            .seen_through
            .is_some_and(|seq| account.login_seen_through.is_none_or(|seen| seq > seen));
        if raise_seen {
            account.login_seen_through = self.seen_through;
        }
        self.needs_reauth.is_some() || self.deadline.is_some() || raise_seen
    }
}

/// The decision and its writes; returns whether anything was written.
///
/// The decision is taken inside the store's read-modify-write, on the record as stored
/// at that moment, never on a copy read earlier: a relink that lands while the check
/// runs (setting `relinked`, raising `after_seq`) is seen by it, not overwritten. The
/// incidents are written after the record; whichever of the check and the relink
/// writes its record last also has the last word on the incidents that go with it,
/// or, if the relink comes second, its `Resume` makes the actor check once more.
fn decide(
    ctx: &ActorContext,
    id: &AccountId,
    entries: &[Read],
) -> Result<(Check, bool), StoreError> {
    let now = ctx.clock.now();
    // The plan of the transaction run that committed (an earlier run's is replaced).
    let planned = std::cell::RefCell::new(None);
    ctx.store.update_login_state(id, &|account| {
        let plan = plan(account, entries, now);
        let write = plan.apply(account);
        *planned.borrow_mut() = Some(plan);
        write
    })?;
    let plan = planned
        .into_inner()
        .ok_or_else(|| StoreError::InvalidState("login state update did not run".into()))?;
    match plan.transition {
        Some(Transition::Repaired { seq }) => {
            tracing::info!(account_id = %id, seq, "login repaired, unparking account")
        }
        Some(Transition::ParkedByWebhook { seq }) => {
            tracing::debug!(account_id = %id, seq, "item error webhook: login required")
        }
        Some(Transition::ParkedAgainAfterRelink { seq }) => {
            tracing::debug!(account_id = %id, seq, "login required again after relink")
        }
        Some(Transition::UnparkedByRelink) => {
            tracing::info!(account_id = %id, "relinked, unparking account")
        }
        None => {}
    }
    let mut wrote =
        plan.needs_reauth.is_some() || plan.deadline.is_some() || plan.seen_through.is_some();
    if !plan.resolve.is_empty() {
        wrote |= resolve_incidents(ctx, id, &plan.resolve)? > 0;
    }
    for (kind, details) in plan.open {
        open_incident(ctx, id, kind, details)?;
        wrote = true;
    }
    Ok((plan.check.unwrap_or(Check::Proceed), wrote))
}

/// The decision over `entries` for the account as stored in `account`. Pure: it runs
/// inside a store transaction that may be retried.
fn plan(account: &Account, entries: &[Read], now: DateTime<Utc>) -> Plan {
    let mut plan = Plan::default();
    // Entries up to the park, or up to the last unpark, have been acted on already.
    let after_seq = account
        .needs_reauth
        .as_ref()
        .map(|p| p.after_seq)
        .max(account.login_seen_through);
    let newer: Vec<&Read> = entries
        .iter()
        .filter(|entry| after_seq.is_none_or(|after| entry.seq > after))
        .collect();
    let max_seq = entries.iter().map(|e| e.seq).max().unwrap_or(0);
    let repaired_at_seq = plan_login(&mut plan, account, &newer, max_seq, now);
    plan_deadline(&mut plan, account, &newer, repaired_at_seq, now);
    plan
}

/// The needs-reauth part of the plan: what the latest login signal newer than what was
/// acted on does to the mark. Returns the seq of the repair (or relink) it saw, if any:
/// deadlines announced before it no longer hold. Seqs start at 0: "no repair" is
/// `None`, not a sentinel seq.
fn plan_login(
    plan: &mut Plan,
    account: &Account,
    newer: &[&Read],
    max_seq: u64,
    now: DateTime<Utc>,
) -> Option<u64> {
    let latest_signal = newer
        .iter()
        .filter_map(|e| login_signal(&e.action).map(|s| (e.seq, s)))
        .next_back();
    // A repair renews the consent: a deadline announced before it no longer holds.
    let repair_lifts_deadline = [
        IncidentKind::PendingExpiration,
        IncidentKind::PendingDisconnect,
    ];
    match (&account.needs_reauth, latest_signal) {
        (Some(_), Some((seq, LoginSignal::Repaired))) => {
            plan.needs_reauth = Some(None);
            plan.deadline = Some(None);
            plan.resolve.push(IncidentKind::NeedsReauth);
            plan.resolve.extend(repair_lifts_deadline);
            plan.transition = Some(Transition::Repaired { seq });
            plan.seen_through = Some(max_seq);
            Some(seq)
        }
        (Some(parked), Some((seq, LoginSignal::Required { code, request_id })))
            if parked.relinked =>
        {
            // The new token already needs a login again.
            plan.park(&code, request_id, max_seq, now);
            plan.transition = Some(Transition::ParkedAgainAfterRelink { seq });
            None
        }
        (Some(parked), _) if parked.relinked => {
            plan.needs_reauth = Some(None);
            plan.resolve.push(IncidentKind::NeedsReauth);
            plan.transition = Some(Transition::UnparkedByRelink);
            // The login errors kept in the inbox were for the old token; they stay
            // there until a sync commits, and must not park it again meanwhile.
            plan.seen_through = Some(max_seq.max(parked.after_seq));
            Some(parked.after_seq)
        }
        (Some(parked), _) => {
            // Still parked: remember how far we looked, so the next activation or
            // passivation does not look again at the same entries. Only `after_seq`
            // moves, and only forward.
            if max_seq > parked.after_seq {
                plan.needs_reauth = Some(Some(NeedsReauth {
                    after_seq: max_seq,
                    ..parked.clone()
                }));
            }
            plan.check = Some(Check::Parked {
                newly_parked: false,
            });
            None
        }
        (None, Some((seq, LoginSignal::Required { code, request_id }))) => {
            plan.park(&code, request_id, max_seq, now);
            plan.transition = Some(Transition::ParkedByWebhook { seq });
            None
        }
        (None, Some((seq, LoginSignal::Repaired))) => {
            // Not parked, but the repair still renews the consent.
            if account.pending_deadline.is_some() {
                plan.deadline = Some(None);
            }
            plan.resolve.extend(repair_lifts_deadline);
            Some(seq)
        }
        (None, None) => None,
    }
}

/// The deadline part of the plan: the last deadline announced after the last repair
/// (or relink), recorded with its warning incident unless it is the one already kept.
fn plan_deadline(
    plan: &mut Plan,
    account: &Account,
    newer: &[&Read],
    repaired_at_seq: Option<u64>,
    now: DateTime<Utc>,
) {
    let announced = newer
        .iter()
        .filter(|e| repaired_at_seq.is_none_or(|repaired| e.seq > repaired))
        .filter_map(|e| deadline_of(&e.action, now))
        .next_back();
    let Some((incident, deadline)) = announced else {
        return;
    };
    let current = account.pending_deadline.as_ref();
    let same = current.is_some_and(|c| {
        c.code == deadline.code && c.deadline == deadline.deadline && c.reason == deadline.reason
    });
    if !same || repaired_at_seq.is_some() {
        plan.open.push((
            incident,
            serde_json::json!({
                "code": deadline.code,
                "deadline": deadline.deadline,
                "reason": deadline.reason,
            }),
        ));
        plan.deadline = Some(Some(deadline));
    }
}

/// A needs-reauth mark and the details of its incident.
fn parked_mark(
    code: &str,
    request_id: Option<String>,
    source: &str,
    after_seq: u64,
    now: DateTime<Utc>,
) -> (NeedsReauth, serde_json::Value) {
    let details = serde_json::json!({
        "code": code,
        "request_id": request_id,
        "source": source,
    });
    let mark = NeedsReauth {
        code: code.to_owned(),
        request_id,
        since: now,
        after_seq,
        relinked: false,
    };
    (mark, details)
}

/// Parks the account after the provider answered "login required" to a sync that
/// used `token`: the failed outcome, the mark and the incident, made durable.
/// `after_seq`: the last inbox entry the failed sync had read.
///
/// Returns `false`, writing nothing, when the account no longer holds `token`: it was
/// relinked while the sync ran, so the error is about the replaced token and the
/// caller syncs again with the new one.
pub async fn park_after_error(
    ctx: &Arc<ActorContext>,
    id: &AccountId,
    error: &SyncError,
    after_seq: u64,
    token: &AccessToken,
) -> Result<bool, StoreError> {
    let task_ctx = ctx.clone();
    let task_id = id.clone();
    let outcome = error.outcome();
    let request_id = error.request_id();
    // The provider's own code for it, as the mark and its incident record it.
    let code = error.code();
    let token = token.clone();
    let parked = tokio::task::spawn_blocking(move || {
        let store = &task_ctx.store;
        let now = task_ctx.clock.now();
        let (mark, details) = parked_mark(&code, request_id, "provider", after_seq, now);
        let stored = store.update_login_state(&task_id, &|account| {
            if account.access_token != token {
                return false;
            }
            account.needs_reauth = Some(mark.clone());
            true
        })?;
        if stored.access_token != token {
            return Ok(false);
        }
        store.record_sync_failed(&task_id, outcome, now)?;
        open_incident(&task_ctx, &task_id, IncidentKind::NeedsReauth, details)?;
        Ok::<_, StoreError>(true)
    })
    .await
    .map_err(|e| StoreError::Io(format!("park task failed: {e}")))??;
    if parked {
        ctx.store.durable().await?;
    }
    Ok(parked)
}

/// After a committed sync: the conditions a success lifts (a `sync_failed` left open,
/// e.g. by a crash between resume and its incident write) are resolved. One key lookup
/// per kind when nothing is open.
pub async fn after_commit(ctx: &Arc<ActorContext>, id: &AccountId) {
    let task_ctx = ctx.clone();
    let task_id = id.clone();
    let resolved = tokio::task::spawn_blocking(move || {
        resolve_incidents(
            &task_ctx,
            &task_id,
            &[
                IncidentKind::SyncFailed,
                IncidentKind::NeedsReauth,
                IncidentKind::AccessRevoked,
            ],
        )
    })
    .await;
    match resolved {
        Ok(Ok(0)) => {}
        Ok(Ok(_)) => {
            if let Err(error) = ctx.store.durable().await {
                tracing::warn!(account_id = %id, %error, "incident resolution not made durable");
            }
        }
        Ok(Err(error)) => tracing::warn!(account_id = %id, %error, "could not resolve incidents"),
        Err(error) => tracing::warn!(account_id = %id, %error, "incident resolution task failed"),
    }
}

#[cfg(test)]
#[path = "reauth_tests.rs"]
mod race_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_give_login_signals_and_deadlines() {
        let required = WebhookAction::LoginRequired {
            code: "LOGIN".into(),
            request_id: Some("r1".into()),
        };
        assert_eq!(
            login_signal(&required),
            Some(LoginSignal::Required {
                code: "LOGIN".into(),
                request_id: Some("r1".into())
            })
        );
        assert_eq!(
            login_signal(&WebhookAction::LoginRepaired),
            Some(LoginSignal::Repaired)
        );
        assert_eq!(login_signal(&WebhookAction::Sync), None);
        assert_eq!(login_signal(&WebhookAction::Ignore), None);
        assert!(!concerns_login(&WebhookAction::Sync) && !concerns_login(&WebhookAction::Ignore));

        let at = DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")
            .expect("a time")
            .with_timezone(&Utc);
        let (incident, expiring) = deadline_of(
            &WebhookAction::DeadlineAnnounced {
                kind: DeadlineKind::Expiration,
                code: "EXPIRING".into(),
                deadline: Some(at),
                reason: None,
            },
            Utc::now(),
        )
        .expect("a deadline");
        assert_eq!(incident, IncidentKind::PendingExpiration);
        assert_eq!(expiring.code, "EXPIRING");
        assert_eq!(expiring.deadline, Some(at));
        let (incident, disconnect) = deadline_of(
            &WebhookAction::DeadlineAnnounced {
                kind: DeadlineKind::Disconnect,
                code: "GOING".into(),
                deadline: None,
                reason: Some("INSTITUTION_MIGRATION".into()),
            },
            Utc::now(),
        )
        .expect("a deadline");
        assert_eq!(disconnect.reason.as_deref(), Some("INSTITUTION_MIGRATION"));
        assert_eq!(incident, IncidentKind::PendingDisconnect);
        assert!(deadline_of(&WebhookAction::LoginRepaired, Utc::now()).is_none());
    }
}
