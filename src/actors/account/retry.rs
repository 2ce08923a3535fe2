//! Retry and backoff after a failed sync: the plan (retry after an exponential backoff
//! with full jitter, at least the rate-limit window after a 429, or give up after
//! `actors.max_sync_attempts`), written to the store before the actor hears of it, so
//! a restart or a passivation does not forget it (the sweeper re-drives due records).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::actors::context::ActorContext;
use crate::actors::incidents::{gave_up_details, open_incident};
use crate::backoff::backoff_delay;
use crate::config::ActorSettings;
use crate::domain::{AccessToken, Account, AccountId, GaveUpCause, SyncGaveUp};
use crate::providers::ErrorClass;
use crate::store::{RetryRecord, StoreError};
use crate::sync::SyncError;

/// What the sync task decided after a failure, already written to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryPlan {
    /// A retry record is due at `until`, after `delay`.
    Retry {
        /// Consecutive failed attempts, this one included.
        attempt: u32,
        /// How long until the retry.
        delay: Duration,
        /// When it is due.
        until: DateTime<Utc>,
    },
    /// No retry: `actors.max_sync_attempts` reached, or the provider said no retry can
    /// succeed (a permanent error, a revoked access). The account is marked failed.
    GiveUp {
        /// Consecutive failed attempts, this one included.
        attempt: u32,
        /// Why, and so which incident and state.
        cause: GaveUpCause,
    },
}

/// A failed sync and what happens next.
#[derive(Debug)]
pub struct SyncFailure {
    /// Why it failed.
    pub error: SyncError,
    /// The retry (or giving up) already recorded in the store.
    pub plan: RetryPlan,
}

/// Whether the provider refused the sync for sending too many requests: such a retry
/// waits at least `actors.rate_limit_backoff`, whatever the backoff says.
pub fn is_rate_limited(error: &SyncError) -> bool {
    matches!(error.class(), Some(ErrorClass::RateLimited { .. }))
}

/// The retry plan after the `previous_attempts + 1`-th consecutive failure: give up at
/// once on an error no retry can fix (the provider's [`ErrorClass::Permanent`] and
/// [`ErrorClass::AccessRevoked`]) or past `max_sync_attempts`, else exponential
/// backoff with full jitter, pushed to at least the rate-limit window when the provider
/// rate-limited us.
pub fn plan_retry(
    settings: &ActorSettings,
    error: &SyncError,
    previous_attempts: u32,
    now: DateTime<Utc>,
    rng: &mut impl Rng,
) -> RetryPlan {
    let attempt = previous_attempts.saturating_add(1);
    let final_cause = match error.class() {
        Some(ErrorClass::AccessRevoked) => Some(GaveUpCause::AccessRevoked),
        Some(ErrorClass::Permanent) => Some(GaveUpCause::Permanent),
        _ => None,
    };
    if let Some(cause) = final_cause {
        return RetryPlan::GiveUp { attempt, cause };
    }
    if attempt >= settings.max_sync_attempts {
        return RetryPlan::GiveUp {
            attempt,
            cause: GaveUpCause::AttemptsExhausted,
        };
    }
    let mut delay = backoff_delay(
        settings.sync_retry_initial,
        settings.sync_retry_max,
        attempt,
        rng,
    );
    if is_rate_limited(error) {
        delay = delay.max(settings.rate_limit_backoff);
    }
    let until = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero());
    RetryPlan::Retry {
        attempt,
        delay,
        until,
    }
}

/// Records a failed sync: its outcome on the account, and either a retry record or the
/// `failed` mark with its incident, made durable so a crash does not forget the retry.
///
/// Giving up is decided against the access token the sync used (`token`, when the
/// failure came from the provider), inside the store's read-modify-write: if the
/// account was relinked meanwhile, the failure is about the replaced token and nothing
/// is marked; `None` says so (sync again, with the new token).
pub(super) async fn record_failure(
    ctx: &Arc<ActorContext>,
    id: &AccountId,
    error: &SyncError,
    previous_attempts: u32,
    token: Option<&AccessToken>,
) -> Option<RetryPlan> {
    let plan = plan_retry(
        &ctx.settings,
        error,
        previous_attempts,
        ctx.clock.now(),
        &mut rand::thread_rng(),
    );
    let task_ctx = ctx.clone();
    let failed_id = id.clone();
    let outcome = error.outcome();
    let code = error.code();
    let request_id = error.request_id();
    let reason = error.to_string();
    let token = token.cloned();
    let recorded = tokio::task::spawn_blocking(move || {
        let store = &task_ctx.store;
        let now = task_ctx.clock.now();
        match plan {
            RetryPlan::Retry { attempt, until, .. } => {
                store.record_sync_failed(&failed_id, outcome, now)?;
                store.record_retry(&RetryRecord {
                    account_id: failed_id,
                    attempt,
                    due_at: until,
                    code,
                    request_id,
                })?;
                Ok(true)
            }
            RetryPlan::GiveUp { attempt, cause } => {
                let mark = SyncGaveUp {
                    reason: format!("{code}: {reason}"),
                    attempts: attempt,
                    since: now,
                    cause,
                };
                let current =
                    |account: &Account| token.as_ref().is_none_or(|t| *t == account.access_token);
                let stored = store.update_login_state(&failed_id, &|account| {
                    if !current(account) {
                        return false;
                    }
                    account.failed = Some(mark.clone());
                    true
                })?;
                if !current(&stored) {
                    return Ok(false);
                }
                store.record_sync_failed(&failed_id, outcome, now)?;
                let details =
                    gave_up_details(&failed_id, &mark, Some(&code), request_id.as_deref());
                open_incident(&task_ctx, &failed_id, mark.incident_kind(), details)?;
                Ok::<_, StoreError>(true)
            }
        }
    })
    .await;
    match recorded {
        Ok(Ok(true)) => {
            if let Err(error) = ctx.store.durable().await {
                tracing::warn!(account_id = %id, %error, "sync failure record not made durable");
            }
            Some(plan)
        }
        Ok(Ok(false)) => None,
        Ok(Err(error)) => {
            tracing::error!(account_id = %id, %error, "could not record sync failure");
            Some(plan)
        }
        Err(error) => {
            tracing::error!(account_id = %id, %error, "could not record sync failure");
            Some(plan)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ProviderError;
    use rand::SeedableRng;

    fn api_error(status: u16, code: &str, class: ErrorClass) -> SyncError {
        SyncError::Provider(ProviderError::Api {
            status,
            error_type: "API_ERROR".to_string(),
            code: code.to_string(),
            message: "boom".to_string(),
            request_id: Some("req-1".to_string()),
            class,
        })
    }

    const RATE_LIMITED: ErrorClass = ErrorClass::RateLimited { retry_after: None };

    fn settings() -> ActorSettings {
        let mut settings = crate::config::Settings::defaults().actors;
        settings.sync_retry_initial = Duration::from_millis(100);
        settings.sync_retry_max = Duration::from_secs(2);
        settings.rate_limit_backoff = Duration::from_secs(60);
        settings.max_sync_attempts = 4;
        settings
    }

    #[test]
    fn a_rate_limit_pushes_the_retry_to_at_least_the_window() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let now = Utc::now();
        for error in [
            api_error(429, "RATE_LIMITED", RATE_LIMITED),
            api_error(400, "SYNC_LIMIT", RATE_LIMITED),
            // A shorter wait the provider asks for does not shorten the window.
            api_error(
                429,
                "RATE_LIMITED",
                ErrorClass::RateLimited {
                    retry_after: Some(Duration::from_secs(1)),
                },
            ),
        ] {
            let RetryPlan::Retry {
                delay,
                until,
                attempt,
            } = plan_retry(&settings(), &error, 0, now, &mut rng)
            else {
                panic!("first failure must be retried");
            };
            assert_eq!(attempt, 1);
            assert!(delay >= Duration::from_secs(60), "{delay:?}");
            assert!(until >= now + chrono::Duration::seconds(60));
        }
        // An ordinary failure stays within the backoff ceiling.
        let error = api_error(500, "SERVER_ERROR", ErrorClass::Transient);
        let RetryPlan::Retry { delay, .. } = plan_retry(&settings(), &error, 0, now, &mut rng)
        else {
            panic!("first failure must be retried");
        };
        assert!(delay <= Duration::from_millis(100), "{delay:?}");
    }

    #[test]
    fn an_error_no_retry_can_fix_gives_up_at_the_first_failure() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let now = Utc::now();
        for (class, cause) in [
            (ErrorClass::Permanent, GaveUpCause::Permanent),
            (ErrorClass::AccessRevoked, GaveUpCause::AccessRevoked),
        ] {
            let error = api_error(400, "NOPE", class);
            assert_eq!(
                plan_retry(&settings(), &error, 0, now, &mut rng),
                RetryPlan::GiveUp { attempt: 1, cause },
                "{class:?}"
            );
        }
        // Everything else is retried.
        for class in [
            ErrorClass::Transient,
            ErrorClass::RateLimited { retry_after: None },
            ErrorClass::CursorRejected,
            ErrorClass::RestartPagination,
        ] {
            let error = api_error(400, "MAYBE", class);
            assert!(
                matches!(
                    plan_retry(&settings(), &error, 0, now, &mut rng),
                    RetryPlan::Retry { attempt: 1, .. }
                ),
                "{class:?}"
            );
        }
    }

    #[test]
    fn the_attempt_limit_gives_up() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let error = api_error(500, "SERVER_ERROR", ErrorClass::Transient);
        let now = Utc::now();
        assert!(matches!(
            plan_retry(&settings(), &error, 2, now, &mut rng),
            RetryPlan::Retry { attempt: 3, .. }
        ));
        assert_eq!(
            plan_retry(&settings(), &error, 3, now, &mut rng),
            RetryPlan::GiveUp {
                attempt: 4,
                cause: GaveUpCause::AttemptsExhausted
            }
        );
    }

    #[test]
    fn backoff_grows_then_caps_and_stays_within_jitter_bounds() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        for attempt in 1..40 {
            let ceiling = base.saturating_mul(1u32 << (attempt - 1).min(30)).min(cap);
            for _ in 0..50 {
                let d = backoff_delay(base, cap, attempt, &mut rng);
                assert!(
                    d <= ceiling.max(Duration::from_millis(10)),
                    "attempt {attempt}: {d:?}"
                );
                assert!(d >= Duration::from_millis(10));
            }
        }
        // Full jitter, not "ceiling plus noise": draws cover the whole [10 ms, ceiling].
        let ceiling = Duration::from_millis(1_600);
        let draws: Vec<Duration> = (0..500)
            .map(|_| backoff_delay(base, cap, 5, &mut rng))
            .collect();
        let lowest = draws.iter().min().copied().unwrap_or_default();
        let highest = draws.iter().max().copied().unwrap_or_default();
        assert!(lowest < ceiling / 10, "{lowest:?}");
        assert!(
            highest > ceiling * 9 / 10 && highest <= ceiling,
            "{highest:?}"
        );
        // Late attempts reach near the cap at least sometimes.
        let max_seen = (0..200)
            .map(|_| backoff_delay(base, cap, 20, &mut rng))
            .max()
            .unwrap_or_default();
        assert!(max_seen > Duration::from_secs(4), "{max_seen:?}");
    }
}
