//! Random fault injection: per-endpoint error rates with Plaid's real error objects,
//! added latency, timeouts that never answer, and webhooks dropped, duplicated or
//! reordered. Owns the settings ([`RandomFaults`]), their partial updates and
//! validation, how an item's settings combine with the global ones, and the draws.
//!
//! Precedence: the global settings (`/admin/faults`) apply to every item; each
//! setting an item sets itself (`/admin/items/{id}/faults`) overrides the global one,
//! one key at a time: an item's `error_rate.transactions_sync` replaces only the global
//! `error_rate.transactions_sync`, an item's `error_mix` replaces the whole global mix,
//! and an item's webhook rates and `webhook_reorder` replace the global ones. Setting a
//! key to `null` removes the override (the item inherits again).
//!
//! Reordered webhooks are held per item: the fire that fills a batch releases it
//! shuffled; otherwise a timer started by the first held delivery releases whatever is
//! held `hold_ms` later (which may include deliveries held after it). Held deliveries
//! report no status to whatever fired them. Global settings live in memory only: a
//! persistent sandbox saves each item's own settings but not the global ones.
//!
//! Draws come from each item's own fault rng, seeded from the sandbox seed and the
//! item's number on a stream separate from its data, so a test that fails replays
//! exactly under the same seed and call order, and injecting faults never changes the
//! data an item generates.

use std::collections::BTreeMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Deserializer, Serialize};

use super::generate;

/// How long a `timeout` fault keeps the request open: far beyond any client timeout.
pub(crate) const TIMEOUT_HOLD: std::time::Duration = std::time::Duration::from_secs(3_600);

/// The ChaCha stream of fault draws (the item's data uses stream 0).
const FAULT_STREAM: u64 = 0xfa_0175;

/// A Plaid endpoint faults can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `/transactions/sync`.
    TransactionsSync,
    /// `/transactions/get`.
    TransactionsGet,
    /// `/item/get`.
    ItemGet,
}

/// What an injected error looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// 500 `API_ERROR` / `INTERNAL_SERVER_ERROR`.
    Internal,
    /// 429 `RATE_LIMIT_EXCEEDED` with the endpoint's limit code
    /// (`TRANSACTIONS_SYNC_LIMIT`, `TRANSACTIONS_LIMIT`, `ITEM_GET_LIMIT`).
    RateLimit,
    /// 400 `ITEM_ERROR` / `ITEM_LOGIN_REQUIRED`, and sticky as at Plaid: the item enters
    /// the login-required state `/sandbox/item/reset_login` sets (its webhook gets
    /// `ITEM`/`ERROR` once, on entering it) and stays there until the login is repaired:
    /// `/sandbox/item/fire_webhook` with `LOGIN_REPAIRED` (or the admin switch
    /// `login_required: false`).
    Login,
    /// No answer: the handler holds the request for [`TIMEOUT_HOLD`].
    Timeout,
}

/// Holding webhook deliveries back and releasing them shuffled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reorder {
    /// Release the held deliveries, shuffled, once this many are held (at least 2).
    pub batch: u32,
    /// Release whatever is held this long after the first of them was held.
    pub hold_ms: u64,
}

/// Random fault settings, of one item (overrides) or of the whole sandbox.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RandomFaults {
    /// Probability (0..=1) that a call to the endpoint gets an injected error.
    #[serde(default)]
    pub error_rate: BTreeMap<Endpoint, f64>,
    /// Relative weights of the injected kinds; empty: always `internal`.
    #[serde(default)]
    pub error_mix: Option<BTreeMap<ErrorKind, f64>>,
    /// Latency added to every call of the endpoint (inside the in-flight window).
    #[serde(default)]
    pub latency_ms: BTreeMap<Endpoint, u64>,
    /// Probability that a fired webhook is never delivered.
    #[serde(default)]
    pub webhook_drop_rate: Option<f64>,
    /// Probability that a delivered webhook is delivered once more.
    #[serde(default)]
    pub webhook_duplicate_rate: Option<f64>,
    /// Hold deliveries and release them shuffled.
    #[serde(default)]
    pub webhook_reorder: Option<Reorder>,
}

/// Accepts `null` as "clear" and absence as "keep": `Some(None)` vs `None`.
pub(crate) fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A partial update of [`RandomFaults`]: absent keys keep their value, `null` clears.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RandomFaultsUpdate {
    #[serde(default)]
    pub error_rate: Option<BTreeMap<Endpoint, Option<f64>>>,
    #[serde(default, deserialize_with = "nullable")]
    pub error_mix: Option<Option<BTreeMap<ErrorKind, f64>>>,
    #[serde(default)]
    pub latency_ms: Option<BTreeMap<Endpoint, Option<u64>>>,
    #[serde(default, deserialize_with = "nullable")]
    pub webhook_drop_rate: Option<Option<f64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub webhook_duplicate_rate: Option<Option<f64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub webhook_reorder: Option<Option<Reorder>>,
}

fn check_rate(name: &str, rate: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(format!("{name} must be between 0 and 1, got {rate}"))
    }
}

impl RandomFaultsUpdate {
    /// Rejects rates outside 0..=1, negative or all-zero mixes and tiny reorder batches.
    pub fn validate(&self) -> Result<(), String> {
        for (endpoint, rate) in self.error_rate.iter().flatten() {
            if let Some(rate) = rate {
                check_rate(&format!("error_rate.{endpoint:?}"), *rate)?;
            }
        }
        if let Some(Some(mix)) = &self.error_mix {
            if mix.values().any(|w| !w.is_finite() || *w < 0.0) {
                return Err("error_mix weights must be finite and non-negative".to_string());
            }
            if !mix.is_empty() && mix.values().sum::<f64>() <= 0.0 {
                return Err("error_mix needs a positive weight".to_string());
            }
        }
        if let Some(Some(rate)) = self.webhook_drop_rate {
            check_rate("webhook_drop_rate", rate)?;
        }
        if let Some(Some(rate)) = self.webhook_duplicate_rate {
            check_rate("webhook_duplicate_rate", rate)?;
        }
        if let Some(Some(reorder)) = self.webhook_reorder {
            if reorder.batch < 2 {
                return Err("webhook_reorder.batch must be at least 2".to_string());
            }
        }
        Ok(())
    }
}

impl RandomFaults {
    /// Applies a validated update.
    pub(crate) fn apply(&mut self, update: RandomFaultsUpdate) {
        for (endpoint, rate) in update.error_rate.into_iter().flatten() {
            match rate {
                Some(rate) => self.error_rate.insert(endpoint, rate),
                None => self.error_rate.remove(&endpoint),
            };
        }
        for (endpoint, ms) in update.latency_ms.into_iter().flatten() {
            match ms {
                Some(ms) => self.latency_ms.insert(endpoint, ms),
                None => self.latency_ms.remove(&endpoint),
            };
        }
        if let Some(mix) = update.error_mix {
            self.error_mix = mix;
        }
        if let Some(rate) = update.webhook_drop_rate {
            self.webhook_drop_rate = rate;
        }
        if let Some(rate) = update.webhook_duplicate_rate {
            self.webhook_duplicate_rate = rate;
        }
        if let Some(reorder) = update.webhook_reorder {
            self.webhook_reorder = reorder;
        }
    }

    /// These settings over `global`: what an item actually gets.
    pub fn over(&self, global: &RandomFaults) -> RandomFaults {
        let mut out = global.clone();
        out.error_rate.extend(self.error_rate.iter());
        out.latency_ms.extend(self.latency_ms.iter());
        if self.error_mix.is_some() {
            out.error_mix.clone_from(&self.error_mix);
        }
        out.webhook_drop_rate = self.webhook_drop_rate.or(global.webhook_drop_rate);
        out.webhook_duplicate_rate = self
            .webhook_duplicate_rate
            .or(global.webhook_duplicate_rate);
        out.webhook_reorder = self.webhook_reorder.or(global.webhook_reorder);
        out
    }

    /// Added latency of a call to `endpoint`.
    pub fn latency(&self, endpoint: Endpoint) -> std::time::Duration {
        std::time::Duration::from_millis(self.latency_ms.get(&endpoint).copied().unwrap_or(0))
    }

    /// Draws whether a call to `endpoint` fails, and how. Draws nothing when the rate
    /// is zero, so an unfaulted endpoint does not shift later draws.
    pub fn draw_error(&self, endpoint: Endpoint, rng: &mut ChaCha8Rng) -> Option<ErrorKind> {
        let rate = self.error_rate.get(&endpoint).copied().unwrap_or(0.0);
        if rate <= 0.0 || !rng.gen_bool(rate.min(1.0)) {
            return None;
        }
        let mix = match &self.error_mix {
            Some(mix) if mix.values().sum::<f64>() > 0.0 => mix,
            _ => return Some(ErrorKind::Internal),
        };
        let mut pick = rng.gen_range(0.0..mix.values().sum::<f64>());
        let mut last = ErrorKind::Internal;
        for (kind, weight) in mix {
            if *weight <= 0.0 {
                continue;
            }
            last = *kind;
            if pick < *weight {
                return Some(*kind);
            }
            pick -= weight;
        }
        // Rounding can leave `pick` a hair above the last weight.
        Some(last)
    }
}

/// Draws `true` with probability `rate` (`None` or 0: no draw).
pub(crate) fn draw(rate: Option<f64>, rng: &mut ChaCha8Rng) -> bool {
    match rate {
        Some(rate) if rate > 0.0 => rng.gen_bool(rate.min(1.0)),
        _ => false,
    }
}

/// The fault rng of item `number` in a sandbox seeded with `seed`.
pub(crate) fn fault_rng(seed: u64, number: u64) -> ChaCha8Rng {
    let mut rng = generate::item_rng(seed, number);
    rng.set_stream(FAULT_STREAM);
    rng
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(value: serde_json::Value) -> RandomFaultsUpdate {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn item_keys_override_global_ones_one_at_a_time() {
        let mut global = RandomFaults::default();
        global.apply(update(serde_json::json!({
            "error_rate": {"transactions_sync": 0.5, "item_get": 0.25},
            "webhook_drop_rate": 0.1,
        })));
        let mut item = RandomFaults::default();
        item.apply(update(serde_json::json!({"error_rate": {"item_get": 1.0}})));
        let got = item.over(&global);
        assert_eq!(got.error_rate[&Endpoint::TransactionsSync], 0.5);
        assert_eq!(got.error_rate[&Endpoint::ItemGet], 1.0);
        assert_eq!(got.webhook_drop_rate, Some(0.1));
        item.apply(update(
            serde_json::json!({"error_rate": {"item_get": null}}),
        ));
        assert_eq!(item.over(&global).error_rate[&Endpoint::ItemGet], 0.25);
    }

    #[test]
    fn validation_rejects_rates_outside_zero_to_one() {
        assert!(update(serde_json::json!({"error_rate": {"item_get": 1.5}}))
            .validate()
            .is_err());
        assert!(update(serde_json::json!({"webhook_drop_rate": -0.1}))
            .validate()
            .is_err());
        assert!(update(serde_json::json!({"error_mix": {"internal": 0.0}}))
            .validate()
            .is_err());
        assert!(update(serde_json::json!({"error_rate": {"item_get": 1.0}}))
            .validate()
            .is_ok());
        let unknown: Result<RandomFaultsUpdate, _> =
            serde_json::from_value(serde_json::json!({"error_mix": {"boom": 1.0}}));
        assert!(unknown.is_err());
    }

    #[test]
    fn the_mix_picks_every_weighted_kind_and_never_a_zero_one() {
        let mut faults = RandomFaults::default();
        faults.apply(update(serde_json::json!({
            "error_rate": {"transactions_get": 1.0},
            "error_mix": {"internal": 1.0, "rate_limit": 1.0, "login": 0.0, "timeout": 2.0},
        })));
        let mut rng = fault_rng(1, 1);
        let mut seen = BTreeMap::new();
        for _ in 0..400 {
            let kind = faults
                .draw_error(Endpoint::TransactionsGet, &mut rng)
                .unwrap();
            *seen.entry(kind).or_insert(0) += 1;
        }
        assert!(!seen.contains_key(&ErrorKind::Login));
        assert!(seen[&ErrorKind::Timeout] > seen[&ErrorKind::Internal]);
        assert!(seen[&ErrorKind::RateLimit] > 50);
        assert_eq!(faults.draw_error(Endpoint::ItemGet, &mut rng), None);
    }
}
