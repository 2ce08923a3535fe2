//! One account's counters ([`StripeStats`]): what tests and benchmarks read to prove how
//! acctor behaved towards Stripe: that it stayed under the rate limit (the busiest
//! wall-clock second), that each idempotency key created at most one object, how many
//! webhooks reached it. Kept under the sandbox's mutex with the state they count, so a
//! snapshot agrees with the objects and events it describes.

use std::collections::BTreeMap;

use serde::Serialize;

/// A snapshot of one account's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StripeStats {
    /// API calls made for the account (authenticated; 429s and injected errors
    /// included).
    pub requests: u64,
    /// Those calls per endpoint: `"GET /v1/products"`, `"GET /v1/products/{id}"`,
    /// `"POST /v1/prices"`, `"GET /v1/events"`, …
    pub by_endpoint: BTreeMap<String, u64>,
    /// The most calls of the account within one wall-clock second.
    pub max_requests_in_one_second: u64,
    /// 429s answered: the per-second limiter's and the random ones.
    pub rate_limited: u64,
    /// 500s answered by the `error_rate` fault.
    pub errors_injected: u64,
    /// Writes applied but answered 500 by the `write_answer_lost_rate` fault.
    #[serde(default)]
    pub answers_lost: u64,
    /// Objects actually created per `Idempotency-Key` (a replay creates nothing): more
    /// than one for a key means exactly-once broke.
    pub creates_by_idempotency_key: BTreeMap<String, u64>,
    /// Events created.
    pub events: u64,
    /// Webhook deliveries the endpoint acknowledged with a 2xx (each copy of a
    /// duplicate counts).
    pub webhooks_delivered: u64,
    /// Deliveries given up after the last attempt.
    pub webhooks_failed: u64,
    /// Events the drop fault never delivered.
    pub webhooks_dropped: u64,
}

/// Counts the calls of one wall-clock second, for the limiter and
/// [`StripeStats::max_requests_in_one_second`].
#[derive(Clone, Debug, Default)]
pub(super) struct SecondMeter {
    second: i64,
    count: u64,
}

impl SecondMeter {
    /// Counts one call at wall-clock second `second`; returns the calls counted in that
    /// second so far, this one included.
    pub fn tick(&mut self, second: i64) -> u64 {
        if second != self.second {
            self.second = second;
            self.count = 0;
        }
        self.count += 1;
        self.count
    }
}

impl StripeStats {
    /// Counts one call to `endpoint` at wall-clock second `second` with `meter`;
    /// returns the calls of that second so far.
    pub(super) fn count_request(
        &mut self,
        meter: &mut SecondMeter,
        endpoint: &str,
        second: i64,
    ) -> u64 {
        self.requests += 1;
        *self.by_endpoint.entry(endpoint.to_owned()).or_default() += 1;
        let in_second = meter.tick(second);
        self.max_requests_in_one_second = self.max_requests_in_one_second.max(in_second);
        in_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_second_is_remembered() {
        let mut stats = StripeStats::default();
        let mut meter = SecondMeter::default();
        for _ in 0..3 {
            stats.count_request(&mut meter, "GET /v1/products", 10);
        }
        assert_eq!(stats.count_request(&mut meter, "GET /v1/events", 11), 1);
        assert_eq!(stats.requests, 4);
        assert_eq!(stats.max_requests_in_one_second, 3);
        assert_eq!(stats.by_endpoint["GET /v1/products"], 3);
    }
}
