//! The client-side request budget per item: a token bucket in front of a provider
//! endpoint, so a busy account waits for budget instead of collecting 429s. Plaid
//! documents `/transactions/sync` at 50 requests per minute per Item (and 2,500 per
//! minute per client); the defaults follow the per-Item figure.
//!
//! Each call reserves a token: with tokens left it goes at once, otherwise it waits
//! until its reserved token has refilled. Reservations queue in arrival order, so a
//! burst is spread at exactly the refill rate. Time is tokio's, so tests run it on
//! paused time in milliseconds.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Buckets kept before full (idle) ones are forgotten.
const PRUNE_ABOVE: usize = 10_000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// May go negative: that many reservations are waiting for refills.
    tokens: f64,
    at: Instant,
}

/// Told of every wait (the metrics hook).
type WaitObserver = Box<dyn Fn(Duration) + Send + Sync>;

/// A per-key token bucket. Cheap to share behind an `Arc`.
pub struct RequestBudget {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<u64, Bucket>>,
    waits: AtomicU64,
    waited_ms: AtomicU64,
    observer: std::sync::OnceLock<WaitObserver>,
}

impl std::fmt::Debug for RequestBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBudget")
            .field("per_second", &self.per_second)
            .field("burst", &self.burst)
            .field("waits", &self.waits())
            .finish_non_exhaustive()
    }
}

impl RequestBudget {
    /// `per_minute` requests per minute per key, at most `burst` at once. `None` when
    /// `per_minute` is zero (no budget).
    pub fn new(per_minute: u32, burst: u32) -> Option<RequestBudget> {
        (per_minute > 0).then(|| RequestBudget {
            per_second: f64::from(per_minute) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
            waits: AtomicU64::new(0),
            waited_ms: AtomicU64::new(0),
            observer: std::sync::OnceLock::new(),
        })
    }

    /// Calls `observer` with every wait from now on (set once: the metrics of the app
    /// that owns this budget; a second call is ignored).
    pub fn observe(&self, observer: impl Fn(Duration) + Send + Sync + 'static) {
        let _ = self.observer.set(Box::new(observer));
    }

    /// Calls that had to wait for budget since start (exported as a metric).
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Total time calls waited for budget, in milliseconds.
    pub fn waited_ms(&self) -> u64 {
        self.waited_ms.load(Ordering::Relaxed)
    }

    /// Reserves one request for `key` and waits until it may be sent. The key is only
    /// hashed (an access token is a fine key: it is never stored here).
    pub async fn acquire(&self, key: &str) {
        let wait = self.reserve(key, Instant::now());
        if !wait.is_zero() {
            self.waits.fetch_add(1, Ordering::Relaxed);
            self.waited_ms
                .fetch_add(wait.as_millis() as u64, Ordering::Relaxed);
            if let Some(observer) = self.observer.get() {
                observer(wait);
            }
            tracing::debug!(
                wait_ms = wait.as_millis() as u64,
                "waiting for provider rate budget"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes a token at `now`; returns how long until it is covered.
    fn reserve(&self, key: &str, now: Instant) -> Duration {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        let key = hasher.finish();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.burst) - 1.0;
        bucket.at = now;
        if bucket.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-bucket.tokens / self.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_beyond_the_budget_waits_exactly_for_the_refill() {
        // 60 per minute = one per second, 3 at once.
        let budget = RequestBudget::new(60, 3).expect("enabled");
        let start = Instant::now();
        for _ in 0..3 {
            budget.acquire("token-a").await;
        }
        assert_eq!(Instant::now(), start, "the burst goes at once");
        assert_eq!(budget.waits(), 0);
        budget.acquire("token-a").await;
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
        budget.acquire("token-a").await;
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
        assert_eq!(budget.waits(), 2);
        // Another item has its own budget.
        let before = Instant::now();
        budget.acquire("token-b").await;
        assert_eq!(Instant::now(), before);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_go_no_sooner_than_their_token_refills() {
        let budget = std::sync::Arc::new(RequestBudget::new(50, 50).expect("enabled"));
        let start = Instant::now();
        let sent = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let budget = budget.clone();
            let sent = sent.clone();
            tasks.push(tokio::spawn(async move {
                budget.acquire("item").await;
                sent.lock().expect("lock").push(Instant::now() - start);
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        let mut times = sent.lock().expect("lock").clone();
        times.sort();
        // The k-th request (0-based) goes no sooner than its token refilled: the first
        // 50 at once, then one every 1.2 s (50 per minute).
        for (k, t) in times.iter().enumerate() {
            let earliest = Duration::from_millis(1200) * (k as u32 + 1).saturating_sub(50);
            assert!(
                *t + Duration::from_millis(1) >= earliest,
                "request {k} at {t:?}, before {earliest:?}"
            );
        }
        // 150 beyond the burst at 50/min: the last goes at 3 minutes, not before.
        assert_eq!(*times.last().expect("some"), Duration::from_secs(180));
        assert_eq!(budget.waits(), 150);
    }

    #[test]
    fn zero_disables_the_budget() {
        assert!(RequestBudget::new(0, 10).is_none());
    }
}
