//! The bank's controls as tests and the admin API set them: how each market decides
//! ([`MarketSettings`]) and which faults the bank injects ([`BankFaults`]), with their
//! partial updates and validation. Updates deny unknown fields so a typo in a test's
//! control is a 400, not a silently ignored setting.

use serde::{Deserialize, Serialize};

use crate::sandbox::faults::nullable;

/// Longest delay a control accepts (a day): longer is a typo, and would park timers
/// past any test.
pub const MAX_DELAY_MS: u64 = 86_400_000;

/// How a market's openings end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Completed with a generated IBAN, unless the market's `reject_rate` draw rejects.
    #[default]
    Complete,
    /// Always rejected.
    Reject,
    /// Never decided: the opening stays `IN_PROGRESS` (the legacy call never answers).
    Never,
}

/// How one market's openings go.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MarketSettings {
    /// How openings end.
    pub outcome: Outcome,
    /// With `outcome: complete`, the probability (0..=1) that an opening is rejected
    /// instead, drawn from the seeded rng. Ignored by `reject` and `never`.
    pub reject_rate: Option<f64>,
    /// Time between the steps of an asynchronous opening (`INITIATED` → `IN_PROGRESS`
    /// → decision); 0: all at once.
    pub delay_ms: u64,
    /// How long the legacy synchronous opening blocks before it decides.
    pub legacy_delay_ms: u64,
    /// Sends no webhooks for this market's openings (they are dropped, counted as
    /// such): the market's outcomes are found only by polling.
    #[serde(default)]
    pub silent: bool,
}

/// A partial update of [`MarketSettings`]: absent keys keep their value; `reject_rate:
/// null` clears the rate.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketUpdate {
    /// New outcome.
    #[serde(default)]
    pub outcome: Option<Outcome>,
    /// New reject rate (`Some(None)`: clear it).
    #[serde(default, deserialize_with = "nullable")]
    pub reject_rate: Option<Option<f64>>,
    /// New step delay.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// New legacy delay.
    #[serde(default)]
    pub legacy_delay_ms: Option<u64>,
    /// Whether the market's webhooks are all dropped.
    #[serde(default)]
    pub silent: Option<bool>,
}

/// Faults the bank injects, bank-wide.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BankFaults {
    /// Probability (0..=1) that a webhook is never sent.
    pub webhook_drop_rate: f64,
    /// Probability (0..=1) that a sent webhook is sent a second time (same event id).
    pub webhook_duplicate_rate: f64,
    /// Added before each webhook delivery.
    pub webhook_delay_ms: u64,
    /// Hold every webhook until `POST /bank/admin/webhooks/flush` (or
    /// [`super::BankSandbox::flush_webhooks`]) delivers the held batch shuffled.
    pub webhook_reorder: bool,
    /// Probability (0..=1) that a status call answers 503.
    pub status_error_rate: f64,
    /// Added to every status call.
    pub status_latency_ms: u64,
    /// The next n card calls answer 500 before doing anything.
    pub card_fail_next: u32,
    /// The next n opening creates (asynchronous or legacy) answer 500 before doing
    /// anything.
    pub create_fail_next: u32,
    /// The next n API calls (any endpoint) answer 429 with `Retry-After`.
    pub rate_limit_next: u32,
    /// The `Retry-After` (seconds) of those 429s.
    pub rate_limit_retry_after_secs: u64,
    /// Send the `INITIATED` webhook (and, with a step delay of 0, every following one)
    /// before the create call answers: the race where the webhook beats the answer.
    pub webhook_before_response: bool,
}

/// A partial update of [`BankFaults`]: absent keys keep their value.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BankFaultsUpdate {
    /// See [`BankFaults::webhook_drop_rate`].
    #[serde(default)]
    pub webhook_drop_rate: Option<f64>,
    /// See [`BankFaults::webhook_duplicate_rate`].
    #[serde(default)]
    pub webhook_duplicate_rate: Option<f64>,
    /// See [`BankFaults::webhook_delay_ms`].
    #[serde(default)]
    pub webhook_delay_ms: Option<u64>,
    /// See [`BankFaults::webhook_reorder`].
    #[serde(default)]
    pub webhook_reorder: Option<bool>,
    /// See [`BankFaults::status_error_rate`].
    #[serde(default)]
    pub status_error_rate: Option<f64>,
    /// See [`BankFaults::status_latency_ms`].
    #[serde(default)]
    pub status_latency_ms: Option<u64>,
    /// See [`BankFaults::card_fail_next`].
    #[serde(default)]
    pub card_fail_next: Option<u32>,
    /// See [`BankFaults::create_fail_next`].
    #[serde(default)]
    pub create_fail_next: Option<u32>,
    /// See [`BankFaults::rate_limit_next`].
    #[serde(default)]
    pub rate_limit_next: Option<u32>,
    /// See [`BankFaults::rate_limit_retry_after_secs`].
    #[serde(default)]
    pub rate_limit_retry_after_secs: Option<u64>,
    /// See [`BankFaults::webhook_before_response`].
    #[serde(default)]
    pub webhook_before_response: Option<bool>,
}

/// Why a control was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSetting(pub String);

impl InvalidSetting {
    /// Refuses a rate outside 0..=1 (NaN included); every simulated provider's fault
    /// rates go through it.
    pub(crate) fn check_rate(name: &str, rate: Option<f64>) -> Result<(), InvalidSetting> {
        match rate {
            Some(rate) if !(0.0..=1.0).contains(&rate) => Err(InvalidSetting(format!(
                "{name} must be between 0 and 1, got {rate}"
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses a delay over `max` milliseconds.
    pub(crate) fn check_delay(
        name: &str,
        delay: Option<u64>,
        max: u64,
    ) -> Result<(), InvalidSetting> {
        match delay {
            Some(delay) if delay > max => Err(InvalidSetting(format!(
                "{name} must be at most {max}, got {delay}"
            ))),
            _ => Ok(()),
        }
    }
}

fn check_rate(name: &str, rate: Option<f64>) -> Result<(), InvalidSetting> {
    InvalidSetting::check_rate(name, rate)
}

fn check_delay(name: &str, delay: Option<u64>) -> Result<(), InvalidSetting> {
    InvalidSetting::check_delay(name, delay, MAX_DELAY_MS)
}

impl MarketUpdate {
    /// Refuses rates outside 0..=1 (NaN included) and delays over [`MAX_DELAY_MS`].
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        check_rate("reject_rate", self.reject_rate.flatten())?;
        check_delay("delay_ms", self.delay_ms)?;
        check_delay("legacy_delay_ms", self.legacy_delay_ms)
    }

    /// Applies the update to `settings`.
    pub(super) fn apply(self, settings: &mut MarketSettings) {
        if let Some(outcome) = self.outcome {
            settings.outcome = outcome;
        }
        if let Some(rate) = self.reject_rate {
            settings.reject_rate = rate;
        }
        if let Some(delay) = self.delay_ms {
            settings.delay_ms = delay;
        }
        if let Some(delay) = self.legacy_delay_ms {
            settings.legacy_delay_ms = delay;
        }
        if let Some(silent) = self.silent {
            settings.silent = silent;
        }
    }
}

impl BankFaultsUpdate {
    /// Refuses rates outside 0..=1 (NaN included) and delays over [`MAX_DELAY_MS`].
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        check_rate("webhook_drop_rate", self.webhook_drop_rate)?;
        check_rate("webhook_duplicate_rate", self.webhook_duplicate_rate)?;
        check_rate("status_error_rate", self.status_error_rate)?;
        check_delay("webhook_delay_ms", self.webhook_delay_ms)?;
        check_delay("status_latency_ms", self.status_latency_ms)?;
        check_delay(
            "rate_limit_retry_after_secs",
            self.rate_limit_retry_after_secs
                .map(|secs| secs.saturating_mul(1000)),
        )
    }

    /// Applies the update to `faults`.
    pub(super) fn apply(self, faults: &mut BankFaults) {
        let BankFaultsUpdate {
            webhook_drop_rate,
            webhook_duplicate_rate,
            webhook_delay_ms,
            webhook_reorder,
            status_error_rate,
            status_latency_ms,
            card_fail_next,
            create_fail_next,
            rate_limit_next,
            rate_limit_retry_after_secs,
            webhook_before_response,
        } = self;
        fn set<T>(target: &mut T, value: Option<T>) {
            if let Some(value) = value {
                *target = value;
            }
        }
        set(&mut faults.webhook_drop_rate, webhook_drop_rate);
        set(&mut faults.webhook_duplicate_rate, webhook_duplicate_rate);
        set(&mut faults.webhook_delay_ms, webhook_delay_ms);
        set(&mut faults.webhook_reorder, webhook_reorder);
        set(&mut faults.status_error_rate, status_error_rate);
        set(&mut faults.status_latency_ms, status_latency_ms);
        set(&mut faults.card_fail_next, card_fail_next);
        set(&mut faults.create_fail_next, create_fail_next);
        set(&mut faults.rate_limit_next, rate_limit_next);
        set(
            &mut faults.rate_limit_retry_after_secs,
            rate_limit_retry_after_secs,
        );
        set(&mut faults.webhook_before_response, webhook_before_response);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_change_only_what_they_name() {
        let mut market = MarketSettings {
            reject_rate: Some(0.5),
            delay_ms: 10,
            ..MarketSettings::default()
        };
        let update: MarketUpdate = serde_json::from_str(r#"{"outcome": "never"}"#).unwrap();
        update.apply(&mut market);
        assert_eq!(market.outcome, Outcome::Never);
        assert_eq!(market.reject_rate, Some(0.5));
        assert_eq!(market.delay_ms, 10);
        let clear: MarketUpdate = serde_json::from_str(r#"{"reject_rate": null}"#).unwrap();
        clear.apply(&mut market);
        assert_eq!(market.reject_rate, None);

        let mut faults = BankFaults {
            webhook_drop_rate: 0.25,
            ..BankFaults::default()
        };
        let update: BankFaultsUpdate = serde_json::from_str(r#"{"card_fail_next": 2}"#).unwrap();
        update.apply(&mut faults);
        assert_eq!(faults.card_fail_next, 2);
        assert_eq!(faults.webhook_drop_rate, 0.25);
    }

    #[test]
    fn out_of_range_values_and_unknown_fields_are_refused() {
        for body in [
            r#"{"reject_rate": 1.5}"#,
            r#"{"reject_rate": -0.1}"#,
            r#"{"delay_ms": 86400001}"#,
        ] {
            let update: MarketUpdate = serde_json::from_str(body).unwrap();
            assert!(update.validate().is_err(), "{body}");
        }
        assert!(serde_json::from_str::<MarketUpdate>(r#"{"outcome": "maybe"}"#).is_err());
        assert!(serde_json::from_str::<MarketUpdate>(r#"{"delay": 1}"#).is_err());
        let nan = MarketUpdate {
            reject_rate: Some(Some(f64::NAN)),
            ..MarketUpdate::default()
        };
        assert!(nan.validate().is_err());

        let update: BankFaultsUpdate =
            serde_json::from_str(r#"{"webhook_duplicate_rate": 2}"#).unwrap();
        assert!(update.validate().is_err());
        assert!(serde_json::from_str::<BankFaultsUpdate>(r#"{"drop_rate": 0.1}"#).is_err());
    }
}
