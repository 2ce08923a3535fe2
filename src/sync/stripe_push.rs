//! The push phase of a Stripe sync: the account's pending local changes, sent to
//! Stripe in order (see [`crate::domain::stripe_push`]).
//!
//! One object's changes go one after the other: a change waits while an earlier change
//! of its object is held (conflict or failed). Each change is decided and committed on
//! its own, with the object write its answer makes and its audit entries, so a crash
//! loses at most the decision about the change being sent, and that change is sent
//! again under the same idempotency key, which Stripe answers with the first answer.
//!
//! - A create is sent as is.
//! - An update or archive first retrieves the object: Stripe's version must still be
//!   the change's base (the mirror's object when it was queued, or the answer to the
//!   change before it). If it is not, someone else changed it: the change is held as a
//!   conflict with both versions, and not sent. A change already sent once (its answer
//!   lost, or acctor stopped before recording it) is sent again without that check,
//!   which its own write would fail.
//! - A refusal (an invalid parameter, a missing object) holds the change as `failed`.
//! - An outage or rate limit that outlasts [`super::call`]'s tries counts an attempt on
//!   the change and fails the sync: the account's retry (backoff with jitter, on the
//!   durable due index) brings it back.

use std::collections::HashSet;

use serde_json::Value;

use super::{call, commit_step, fetched_at, StripeEnv, Target};
use crate::domain::stripe::{ObjectType, ObjectWrite, OnTie, Stamp, StripeState};
use crate::domain::stripe_push::{AuditNote, Push, PushAction, PushStatus};
use crate::providers::{ErrorClass, ProviderError};
use crate::store::{ObjectCommit, StoreError};
use crate::sync::SyncError;

/// What deciding one change writes.
struct Decision {
    writes: Vec<ObjectWrite>,
    audit: Vec<(ObjectType, String, AuditNote)>,
}

/// Pushes the account's pending changes; see the module docs.
pub(super) async fn push_pending(
    env: &StripeEnv<'_>,
    target: &Target<'_>,
    state: &StripeState,
) -> Result<(), SyncError> {
    let store = env.store.clone();
    let id = target.account.id.clone();
    let open = tokio::task::spawn_blocking(move || store.open_pushes(&id))
        .await
        .map_err(|e| StoreError::Io(format!("store task failed: {e}")))??;
    let mut held: HashSet<(ObjectType, String)> = HashSet::new();
    for mut push in open {
        let object = push.object_id.clone().map(|id| (push.object_type, id));
        if let Some(object) = &object {
            if held.contains(object) {
                continue;
            }
        }
        if push.status != PushStatus::Pending {
            held.extend(object);
            continue;
        }
        let decision = match decide(env, target, state, &mut push).await {
            Ok(decision) => decision,
            Err(SyncError::Provider(error)) => {
                push.attempts += 1;
                push.last_error = Some(error.to_string());
                push.updated_at = env.clock.now();
                record(env, target, state, push, Decision::none()).await?;
                metric(env, "retried");
                return Err(error.into());
            }
            Err(error) => return Err(error),
        };
        metric(env, push.status.as_str());
        if push.status.is_held() {
            held.extend(push.object_id.clone().map(|id| (push.object_type, id)));
        }
        record(env, target, state, push, decision).await?;
    }
    Ok(())
}

impl Decision {
    fn none() -> Decision {
        Decision {
            writes: Vec::new(),
            audit: Vec::new(),
        }
    }
}

fn metric(env: &StripeEnv<'_>, outcome: &str) {
    if let Some(metrics) = env.metrics {
        metrics.stripe_push(outcome);
    }
}

/// Commits a change's new state with what its decision writes.
async fn record(
    env: &StripeEnv<'_>,
    target: &Target<'_>,
    state: &StripeState,
    push: Push,
    decision: Decision,
) -> Result<(), SyncError> {
    commit_step(
        env,
        ObjectCommit {
            account_id: target.account.id.clone(),
            writes: decision.writes,
            state: state.clone(),
            consumed: Vec::new(),
            finish: None,
            pushes: vec![push],
            audit: decision.audit,
        },
    )
    .await?;
    Ok(())
}

/// Whether Stripe refused the change itself (rather than being unreachable, busy, or
/// refusing the account's key, which no change of the change can help).
fn refused(error: &ProviderError) -> bool {
    matches!(error.class(), ErrorClass::Permanent)
        && matches!(error, ProviderError::Api { status, .. } if (400..500).contains(status))
}

/// Decides one pending change: sends it, or holds it. Errors only when Stripe could not
/// be reached (the change stays pending).
async fn decide(
    env: &StripeEnv<'_>,
    target: &Target<'_>,
    state: &StripeState,
    push: &mut Push,
) -> Result<Decision, SyncError> {
    let now = env.clock.now();
    if push.action != PushAction::Create && push.sent_at.is_none() {
        let base = base_of(env, push).await?;
        let Some(id) = push.object_id.clone() else {
            return Ok(fail(push, "the change names no object", now));
        };
        let current = call(env.params, "retrieve", || {
            env.api.retrieve(target.access(), push.object_type, &id)
        })
        .await?;
        if current.value != base {
            let at = fetched_at(env, &current);
            push.status = PushStatus::Conflict;
            push.theirs.clone_from(&current.value);
            push.last_error = Some(match &current.value {
                Some(_) => format!(
                    "{} {id} changed at Stripe after the version this change was based on",
                    push.object_type.object_name()
                ),
                None => format!(
                    "{} {id} no longer exists at Stripe",
                    push.object_type.object_name()
                ),
            });
            push.updated_at = now;
            let mut decision = Decision::none();
            decision.audit.push((
                push.object_type,
                id.clone(),
                AuditNote::outbound("conflict held (changed at Stripe)", push),
            ));
            // What the check saw is the freshest copy there is: Stripe answered after
            // everything stored was written (the actor writes one thing at a time), so
            // it wins a tie, as a re-fetch does.
            decision.writes.push(ObjectWrite {
                object_type: push.object_type,
                id,
                body: current.value,
                stamp: Stamp { at, event_id: None },
                on_tie: OnTie::Apply,
                note: AuditNote::inbound("retrieved", format!("conflict check of {}", push.id())),
            });
            return Ok(decision);
        }
    }
    if push.sent_at.is_none() {
        // Recorded before the write: from now on, its answer may be lost.
        push.sent_at = Some(now);
        record(env, target, state, push.clone(), Decision::none()).await?;
        // On disk before the write leaves: after a crash, the change must be known as
        // possibly applied, or its own write would be taken for someone else's.
        env.store.durable().await?;
    }
    let key = push.idempotency_key();
    let written = call(env.params, "write", || {
        env.api.write(
            target.access(),
            push.object_type,
            push.object_id.as_deref(),
            &push.params,
            &key,
        )
    })
    .await;
    let answer = match written {
        Ok(answer) => answer,
        Err(error) if refused(&error) => {
            let message = format!("stripe refused it: {} ({})", error, error.code());
            let mut decision = fail(push, &message, now);
            if let Some(id) = &push.object_id {
                decision.audit.push((
                    push.object_type,
                    id.clone(),
                    AuditNote::outbound(format!("refused by Stripe: {}", error.code()), push),
                ));
            }
            return Ok(decision);
        }
        Err(error) => return Err(error.into()),
    };
    let at = fetched_at(env, &answer);
    let Some(id) = answer
        .value
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return Ok(fail(push, "stripe's answer carries no object id", now));
    };
    push.status = PushStatus::Pushed;
    push.object_id = Some(id.clone());
    push.result = Some(answer.value.clone());
    push.pushed_at = Some(now);
    push.updated_at = now;
    push.last_error = None;
    let what = format!("{} pushed", push.action.as_str());
    Ok(Decision {
        writes: vec![ObjectWrite {
            object_type: push.object_type,
            id,
            body: Some(answer.value),
            stamp: Stamp { at, event_id: None },
            on_tie: OnTie::Apply,
            note: AuditNote::outbound(what, push),
        }],
        audit: Vec::new(),
    })
}

/// Holds the change as refused.
fn fail(push: &mut Push, message: &str, now: chrono::DateTime<chrono::Utc>) -> Decision {
    push.status = PushStatus::Failed;
    push.last_error = Some(message.to_owned());
    push.updated_at = now;
    Decision::none()
}

/// The object as the change expects to find it at Stripe: its own base, or what the
/// change it was queued behind left (its answer once pushed; its own base, recursively,
/// when it was discarded).
async fn base_of(env: &StripeEnv<'_>, push: &Push) -> Result<Option<Value>, SyncError> {
    if push.base.is_some() {
        return Ok(push.base.clone());
    }
    let mut after = push.after;
    while let Some(seq) = after {
        let store = env.store.clone();
        let id = push.account_id.clone();
        let earlier = tokio::task::spawn_blocking(move || store.get_push(&id, seq))
            .await
            .map_err(|e| StoreError::Io(format!("store task failed: {e}")))??;
        let Some(earlier) = earlier else {
            return Ok(None);
        };
        match earlier.status {
            PushStatus::Pushed => return Ok(earlier.result),
            _ if earlier.base.is_some() => return Ok(earlier.base),
            _ => after = earlier.after,
        }
    }
    Ok(None)
}
