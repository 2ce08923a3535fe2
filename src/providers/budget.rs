//! The client-side request budget per item: a token bucket in front of a provider
//! endpoint, so a busy account waits for budget instead of collecting 429s. Plaid
//! documents `/transactions/sync` at 50 requests per minute per Item (and 2,500 per
//! minute per client); the defaults follow the per-Item figure.
//!
//! Each call reserves a token: with tokens left it goes at once, otherwise it waits
//! until its reserved token has refilled. Reservations queue in arrival order, so a
//! burst is spread at exactly the refill rate. A caller cancelled while it waits (its
//! sync was aborted or timed out) gives its token back, or every cancellation would
//! push all later requests of the item one refill further out. Time is tokio's, so
//! tests run it on paused time in milliseconds.
//!
//! Full buckets (idle items) are forgotten once there are more than `PRUNE_ABOVE`, but
//! never on every call: a prune scans the whole map under the lock, and while items are
//! busy it frees nothing. It runs when the map has doubled since the last one or
//! `PRUNE_EVERY` has passed, so its cost stays amortized O(1) per call.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Buckets kept before full (idle) ones are forgotten.
const PRUNE_ABOVE: usize = 10_000;
/// Longest time between two prunes while the map is above [`PRUNE_ABOVE`].
const PRUNE_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// May go negative: that many reservations are waiting for refills.
    tokens: f64,
    at: Instant,
}

/// The buckets and the pruning schedule, behind one lock.
#[derive(Debug)]
struct Buckets {
    map: HashMap<u64, Bucket>,
    /// The next prune runs once the map holds this many buckets...
    prune_at_len: usize,
    /// ...or at this time, whichever comes first.
    prune_at: Instant,
    /// Prunes run so far (tests check they stay rare).
    prunes: u64,
}

/// Told of every wait (the metrics hook).
type WaitObserver = Box<dyn Fn(Duration) + Send + Sync>;

/// A per-key token bucket. Cheap to share behind an `Arc`.
pub struct RequestBudget {
    per_second: f64,
    burst: f64,
    buckets: Mutex<Buckets>,
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
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                prune_at_len: PRUNE_ABOVE + 1,
                prune_at: Instant::now() + PRUNE_EVERY,
                prunes: 0,
            }),
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
    /// hashed (an access token is a fine key: it is never stored here). Dropping the
    /// future while it waits gives the reserved token back.
    pub async fn acquire(&self, key: &str) {
        let key = hash_key(key);
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
            let reservation = Reservation {
                budget: self,
                key,
                used: false,
            };
            tokio::time::sleep(wait).await;
            reservation.used();
        }
    }

    /// Takes a token at `now`; returns how long until it is covered.
    fn reserve(&self, key: u64, now: Instant) -> Duration {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        self.maybe_prune(&mut buckets, now);
        let bucket = buckets.map.entry(key).or_insert(Bucket {
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

    /// Gives back a token reserved for `key` and never used. A bucket no longer there
    /// was full (pruned), so there is nothing to give back to.
    fn refund(&self, key: u64, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bucket) = buckets.map.get_mut(&key) {
            let refill = now.duration_since(bucket.at).as_secs_f64() * self.per_second;
            bucket.tokens = (bucket.tokens + refill + 1.0).min(self.burst);
            bucket.at = now;
        }
    }

    /// Forgets full buckets when the map is large and a prune is due (see the module
    /// docs), then schedules the next one: at twice what is left (never below the
    /// threshold) or one `PRUNE_EVERY` from now.
    fn maybe_prune(&self, buckets: &mut Buckets, now: Instant) {
        let len = buckets.map.len();
        if len <= PRUNE_ABOVE || (len < buckets.prune_at_len && now < buckets.prune_at) {
            return;
        }
        let (rate, burst) = (self.per_second, self.burst);
        buckets
            .map
            .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        buckets.prunes += 1;
        buckets.prune_at_len = buckets.map.len().saturating_mul(2).max(PRUNE_ABOVE + 1);
        buckets.prune_at = now + PRUNE_EVERY;
    }
}

fn hash_key(key: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

/// A token reserved by a waiting caller: returned to its bucket if the wait is
/// dropped before it ends.
struct Reservation<'a> {
    budget: &'a RequestBudget,
    key: u64,
    used: bool,
}

impl Reservation<'_> {
    /// The wait ended: the token is spent on the request.
    fn used(mut self) {
        self.used = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.used {
            self.budget.refund(self.key, Instant::now());
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

    #[tokio::test(start_paused = true)]
    async fn a_caller_cancelled_while_waiting_gives_its_token_back() {
        // One per second, one at once.
        let budget = RequestBudget::new(60, 1).expect("enabled");
        let start = Instant::now();
        budget.acquire("item").await;
        // The second caller would go at 1 s; it is cancelled at 100 ms.
        let cancelled =
            tokio::time::timeout(Duration::from_millis(100), budget.acquire("item")).await;
        assert!(cancelled.is_err(), "it had to wait");
        // The next one takes the token the cancelled caller reserved: 1 s, not 2 s.
        budget.acquire("item").await;
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
        // And the one after it waits its own full refill: the refund made one token,
        // not more.
        budget.acquire("item").await;
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn pruning_is_rare_while_items_are_busy_and_frees_idle_buckets() {
        let budget = RequestBudget::new(60, 1).expect("enabled");
        let prunes = || budget.buckets.lock().expect("lock").prunes;
        let len = || budget.buckets.lock().expect("lock").map.len();
        // More busy items than the threshold: each took its one token just now.
        let busy = PRUNE_ABOVE + 100;
        for n in 0..busy {
            budget.acquire(&format!("item-{n}")).await;
        }
        assert_eq!(len(), busy);
        assert!(prunes() <= 1, "{} prunes", prunes());
        let before = prunes();
        // A thousand more calls (each on its own new item) within a second: a full scan
        // per call would be a thousand prunes that free nothing.
        for n in 0..1_000 {
            budget.acquire(&format!("late-{n}")).await;
        }
        assert_eq!(
            prunes(),
            before,
            "no prune before the map doubles or time passes"
        );
        assert_eq!(len(), busy + 1_000);
        // A minute later every bucket has refilled: the next call prunes, once, and frees
        // them all.
        tokio::time::advance(PRUNE_EVERY).await;
        budget.acquire("fresh").await;
        assert_eq!(prunes(), before + 1);
        assert_eq!(len(), 1);
    }

    #[test]
    fn zero_disables_the_budget() {
        assert!(RequestBudget::new(0, 10).is_none());
    }
}
