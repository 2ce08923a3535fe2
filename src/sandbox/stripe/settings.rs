//! The faults one simulated Stripe account injects ([`StripeFaults`]) and their partial
//! update ([`StripeFaultsUpdate`]). Faults are per account because acctor's hard cases
//! are per account: one account being rate limited must not slow the others down, and
//! a test of duplicated webhooks must not disturb the account next to it.
//!
//! Updates deny unknown fields, so a typo in a test's control is a 400 at the admin API,
//! not a silently ignored setting; [`StripeFaultsUpdate::validate`] refuses rates outside
//! 0..=1 and absurd delays.

use serde::{Deserialize, Serialize};

use crate::sandbox::faults::nullable;
use crate::sandbox::InvalidSetting;

/// Longest delay or latency a control accepts (a minute): longer is a typo, and would
/// park requests and deliveries past any test's patience.
pub const MAX_DELAY_MS: u64 = 60_000;
/// Most delivery attempts a control accepts.
pub const MAX_WEBHOOK_ATTEMPTS: u32 = 10;
/// Delivery attempts per webhook unless configured otherwise (Stripe retries for days;
/// a test wants the verdict quickly).
pub const DEFAULT_WEBHOOK_ATTEMPTS: u32 = 3;

/// What one account's API and webhooks do wrong on purpose. All draws come from the
/// account's seeded fault stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StripeFaults {
    /// Probability (0..=1) that an API call answers 500 `api_error` with
    /// `Stripe-Should-Retry: true`.
    pub error_rate: f64,
    /// Probability (0..=1) that an API call answers 429 `rate_limit` with
    /// `Retry-After: retry_after_secs`.
    pub rate_limit_rate: f64,
    /// The `Retry-After` of the random 429s.
    pub retry_after_secs: u64,
    /// A real limiter: the calls of the account beyond this many within one wall-clock
    /// second answer 429 `rate_limit` with `Retry-After: 1`.
    pub rate_limit_per_second: Option<u32>,
    /// Added to every API call of the account.
    pub latency_ms: u64,
    /// Probability (0..=1) that an event is never delivered (it is still listed by
    /// `/v1/events`).
    pub webhook_drop_rate: f64,
    /// Probability (0..=1) that an event is delivered twice.
    pub webhook_duplicate_rate: f64,
    /// Waited before each delivery.
    pub webhook_delay_ms: u64,
    /// Deliveries leave in random order: a worker picks a random one of the next few
    /// queued instead of the oldest.
    pub webhook_shuffle: bool,
    /// Tries per delivery (the first included) while the endpoint fails or answers
    /// non-2xx.
    pub webhook_attempts: u32,
    /// `*.deleted` events carry the whole object as it was before the deletion, as
    /// Stripe's do (the default); off: `{id, object, deleted: true}`, the API's answer
    /// to a DELETE. See the module docs of `stripe`.
    pub deleted_events_full_object: bool,
    /// Probability (0..=1) that a write with an `Idempotency-Key` is applied (and its
    /// answer saved for the key) but answered 500, as when the connection breaks after
    /// Stripe did the work: only a retry under the same key learns what happened.
    #[serde(default)]
    pub write_answer_lost_rate: f64,
}

impl Default for StripeFaults {
    /// No faults; [`DEFAULT_WEBHOOK_ATTEMPTS`] tries per delivery; `Retry-After: 1`.
    fn default() -> Self {
        StripeFaults {
            error_rate: 0.0,
            rate_limit_rate: 0.0,
            retry_after_secs: 1,
            rate_limit_per_second: None,
            latency_ms: 0,
            webhook_drop_rate: 0.0,
            webhook_duplicate_rate: 0.0,
            webhook_delay_ms: 0,
            webhook_shuffle: false,
            webhook_attempts: DEFAULT_WEBHOOK_ATTEMPTS,
            deleted_events_full_object: true,
            write_answer_lost_rate: 0.0,
        }
    }
}

/// A partial update of [`StripeFaults`]: absent fields keep their value;
/// `rate_limit_per_second: null` turns the limiter off.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeFaultsUpdate {
    /// See [`StripeFaults::error_rate`].
    #[serde(default)]
    pub error_rate: Option<f64>,
    /// See [`StripeFaults::rate_limit_rate`].
    #[serde(default)]
    pub rate_limit_rate: Option<f64>,
    /// See [`StripeFaults::retry_after_secs`].
    #[serde(default)]
    pub retry_after_secs: Option<u64>,
    /// See [`StripeFaults::rate_limit_per_second`] (`Some(None)`: no limiter).
    #[serde(default, deserialize_with = "nullable")]
    pub rate_limit_per_second: Option<Option<u32>>,
    /// See [`StripeFaults::latency_ms`].
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// See [`StripeFaults::webhook_drop_rate`].
    #[serde(default)]
    pub webhook_drop_rate: Option<f64>,
    /// See [`StripeFaults::webhook_duplicate_rate`].
    #[serde(default)]
    pub webhook_duplicate_rate: Option<f64>,
    /// See [`StripeFaults::webhook_delay_ms`].
    #[serde(default)]
    pub webhook_delay_ms: Option<u64>,
    /// See [`StripeFaults::webhook_shuffle`].
    #[serde(default)]
    pub webhook_shuffle: Option<bool>,
    /// See [`StripeFaults::webhook_attempts`].
    #[serde(default)]
    pub webhook_attempts: Option<u32>,
    /// See [`StripeFaults::deleted_events_full_object`].
    #[serde(default)]
    pub deleted_events_full_object: Option<bool>,
    /// See [`StripeFaults::write_answer_lost_rate`].
    #[serde(default)]
    pub write_answer_lost_rate: Option<f64>,
}

fn check_rate(name: &str, rate: Option<f64>) -> Result<(), InvalidSetting> {
    InvalidSetting::check_rate(name, rate)
}

fn check_delay(name: &str, delay_ms: Option<u64>) -> Result<(), InvalidSetting> {
    InvalidSetting::check_delay(name, delay_ms, MAX_DELAY_MS)
}

impl StripeFaultsUpdate {
    /// Refuses rates outside 0..=1 (NaN included), delays over [`MAX_DELAY_MS`], a
    /// limiter of 0 calls per second and attempts outside 1..=[`MAX_WEBHOOK_ATTEMPTS`].
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        check_rate("error_rate", self.error_rate)?;
        check_rate("rate_limit_rate", self.rate_limit_rate)?;
        check_rate("webhook_drop_rate", self.webhook_drop_rate)?;
        check_rate("webhook_duplicate_rate", self.webhook_duplicate_rate)?;
        check_rate("write_answer_lost_rate", self.write_answer_lost_rate)?;
        check_delay("latency_ms", self.latency_ms)?;
        check_delay("webhook_delay_ms", self.webhook_delay_ms)?;
        check_delay(
            "retry_after_secs",
            self.retry_after_secs.map(|secs| secs.saturating_mul(1000)),
        )?;
        if self.rate_limit_per_second == Some(Some(0)) {
            return Err(InvalidSetting(
                "rate_limit_per_second must be at least 1 (null turns the limiter off)".into(),
            ));
        }
        match self.webhook_attempts {
            Some(attempts) if !(1..=MAX_WEBHOOK_ATTEMPTS).contains(&attempts) => {
                Err(InvalidSetting(format!(
                    "webhook_attempts must be between 1 and {MAX_WEBHOOK_ATTEMPTS}, got {attempts}"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Applies the update to `faults`. Values [`StripeFaultsUpdate::validate`] would
    /// refuse are brought into range (rates clamped, a NaN rate read as 0), so a
    /// handle call that skipped validation still leaves sane faults.
    pub(super) fn apply(self, faults: &mut StripeFaults) {
        let StripeFaultsUpdate {
            error_rate,
            rate_limit_rate,
            retry_after_secs,
            rate_limit_per_second,
            latency_ms,
            webhook_drop_rate,
            webhook_duplicate_rate,
            webhook_delay_ms,
            webhook_shuffle,
            webhook_attempts,
            deleted_events_full_object,
            write_answer_lost_rate,
        } = self;
        fn set<T>(target: &mut T, value: Option<T>) {
            if let Some(value) = value {
                *target = value;
            }
        }
        let rate = |r: Option<f64>| r.map(|r| if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) });
        let delay = |d: Option<u64>| d.map(|d| d.min(MAX_DELAY_MS));
        set(&mut faults.error_rate, rate(error_rate));
        set(&mut faults.rate_limit_rate, rate(rate_limit_rate));
        set(&mut faults.retry_after_secs, retry_after_secs);
        set(
            &mut faults.rate_limit_per_second,
            rate_limit_per_second.map(|limit| limit.map(|n| n.max(1))),
        );
        set(&mut faults.latency_ms, delay(latency_ms));
        set(&mut faults.webhook_drop_rate, rate(webhook_drop_rate));
        set(
            &mut faults.webhook_duplicate_rate,
            rate(webhook_duplicate_rate),
        );
        set(&mut faults.webhook_delay_ms, delay(webhook_delay_ms));
        set(&mut faults.webhook_shuffle, webhook_shuffle);
        set(
            &mut faults.write_answer_lost_rate,
            rate(write_answer_lost_rate),
        );
        set(
            &mut faults.webhook_attempts,
            webhook_attempts.map(|n| n.clamp(1, MAX_WEBHOOK_ATTEMPTS)),
        );
        set(
            &mut faults.deleted_events_full_object,
            deleted_events_full_object,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_change_only_what_they_name_and_null_clears_the_limiter() {
        let mut faults = StripeFaults {
            error_rate: 0.5,
            rate_limit_per_second: Some(20),
            ..StripeFaults::default()
        };
        let update: StripeFaultsUpdate =
            serde_json::from_str(r#"{"webhook_shuffle": true}"#).unwrap();
        update.apply(&mut faults);
        assert!(faults.webhook_shuffle);
        assert_eq!(faults.error_rate, 0.5);
        assert_eq!(faults.rate_limit_per_second, Some(20));
        let clear: StripeFaultsUpdate =
            serde_json::from_str(r#"{"rate_limit_per_second": null}"#).unwrap();
        clear.apply(&mut faults);
        assert_eq!(faults.rate_limit_per_second, None);
        assert_eq!(faults.webhook_attempts, DEFAULT_WEBHOOK_ATTEMPTS);
    }

    #[test]
    fn out_of_range_values_and_unknown_fields_are_refused() {
        for body in [
            r#"{"error_rate": 1.5}"#,
            r#"{"webhook_drop_rate": -0.1}"#,
            r#"{"latency_ms": 60001}"#,
            r#"{"rate_limit_per_second": 0}"#,
            r#"{"webhook_attempts": 0}"#,
        ] {
            let update: StripeFaultsUpdate = serde_json::from_str(body).unwrap();
            assert!(update.validate().is_err(), "{body}");
        }
        assert!(serde_json::from_str::<StripeFaultsUpdate>(r#"{"drop_rate": 0.1}"#).is_err());
        let mut faults = StripeFaults::default();
        StripeFaultsUpdate {
            error_rate: Some(f64::NAN),
            webhook_duplicate_rate: Some(7.0),
            ..StripeFaultsUpdate::default()
        }
        .apply(&mut faults);
        assert_eq!(faults.error_rate, 0.0);
        assert_eq!(faults.webhook_duplicate_rate, 1.0);
    }
}
