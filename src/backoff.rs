//! Exponential backoff with full jitter, the one retry-delay policy: sync retries,
//! reconcile loops and outbound deliveries all wait by it, so many failing together do
//! not retry in lockstep.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with full jitter: a uniform delay in `[0, min(cap, base·2^(n-1))]`,
/// never below 10 ms, so many accounts failing together do not retry in lockstep.
pub fn backoff_delay(base: Duration, cap: Duration, attempt: u32, rng: &mut impl Rng) -> Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    let ceiling = base.saturating_mul(1u32 << exponent).min(cap);
    let millis = ceiling.as_millis().max(10) as u64;
    Duration::from_millis(rng.gen_range(10..=millis.max(10)))
}
