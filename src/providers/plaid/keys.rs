//! The cache of Plaid's webhook verification keys (JWKs by `kid`).
//!
//! Verification is on the webhook hot path, so a cache hit is one sharded read lock in a
//! `DashMap` and an `Arc` clone: no async lock, no allocation. Everything else here exists
//! so that the cache stays correct and cheap for the provider:
//! - keys are re-fetched after [`KEY_TTL_SECS`], so a rotation or an `expired_at` set by
//!   the provider is learned without a restart;
//! - concurrent misses for one `kid` share a single fetch (a `Shared` future parked in
//!   `inflight`), so a burst of webhooks signed by a new key costs one request;
//! - a `kid` the provider says does not exist is remembered for [`NEGATIVE_TTL_SECS`], and
//!   fetches for never-seen kids are capped per second, so forged headers with random
//!   kids cannot make us hammer the provider or grow memory without bound;
//! - when a refresh fails because the provider is down, a previously fetched key keeps
//!   being used for up to [`STALE_IF_ERROR_SECS`]: webhooks keep flowing through a
//!   provider outage, and a revoked key is still learned at the first successful refresh.
//!
//! Time is passed in (unix seconds) so tests drive TTLs without waiting; it is whatever
//! the caller says (`verify_webhook_at` replays recorded webhooks at their own time), so
//! time arithmetic saturates instead of overflowing.

use std::sync::{Arc, Mutex, Weak};

use base64::Engine as _;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use futures::future::{BoxFuture, FutureExt, Shared};
use tracing::warn;

use super::wire::{PlaidJwk, INVALID_API_KEYS};
use super::B64URL;
use crate::providers::ProviderError;

/// How long a fetched key is trusted before it is re-fetched.
pub(crate) const KEY_TTL_SECS: i64 = 600;
/// How long a `kid` the provider does not know is answered from the cache.
pub(crate) const NEGATIVE_TTL_SECS: i64 = 30;
/// How long after its fetch a key may still be used when refreshing it fails.
pub(crate) const STALE_IF_ERROR_SECS: i64 = 3600;
/// Fetches for kids never seen before, per second; more are refused as unavailable.
pub(crate) const MAX_NEW_KID_FETCHES_PER_SEC: u32 = 20;
/// Negative entries above which expired ones are purged.
const NEGATIVE_PURGE_THRESHOLD: usize = 1024;

/// A decoded P-256 verification key.
#[derive(Debug)]
pub(crate) struct VerificationKey {
    /// `0x04 || x || y`: the uncompressed point ring's `UnparsedPublicKey` takes.
    pub(crate) point: [u8; 65],
    /// Unix seconds the provider expired it, if it has.
    pub(crate) expired_at: Option<i64>,
}

/// Why no key could be produced for a `kid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyError {
    /// The provider says the key does not exist: the webhook is not authentic.
    NotFound,
    /// The key could not be fetched (provider down, rate limited, unusable answer).
    Unavailable(String),
}

/// Fetches one JWK by `kid` from the provider.
pub(crate) type KeyFetcher =
    Arc<dyn Fn(String) -> BoxFuture<'static, Result<PlaidJwk, ProviderError>> + Send + Sync>;

type SharedFetch = Shared<BoxFuture<'static, Result<Arc<VerificationKey>, KeyError>>>;

enum Slot {
    Known {
        key: Arc<VerificationKey>,
        fetched_at: i64,
    },
    Unknown {
        until: i64,
    },
}

struct Inner {
    slots: DashMap<String, Slot>,
    inflight: DashMap<String, SharedFetch>,
    fetcher: KeyFetcher,
    /// (second, fetches started in it) for never-seen kids. A std mutex: only the miss
    /// path takes it, never across an await.
    new_kid_window: Mutex<(i64, u32)>,
}

/// The verification key cache. Cheap to share behind the client.
pub(crate) struct KeyCache {
    inner: Arc<Inner>,
}

impl KeyCache {
    /// A cache that fetches misses with `fetcher`.
    pub(crate) fn new(fetcher: KeyFetcher) -> Self {
        KeyCache {
            inner: Arc::new(Inner {
                slots: DashMap::new(),
                inflight: DashMap::new(),
                fetcher,
                new_kid_window: Mutex::new((i64::MIN, 0)),
            }),
        }
    }

    /// The key for `kid` at time `now` (unix seconds), from the cache or the provider.
    pub(crate) async fn get(&self, kid: &str, now: i64) -> Result<Arc<VerificationKey>, KeyError> {
        let mut stale = None;
        if let Some(slot) = self.inner.slots.get(kid) {
            match &*slot {
                Slot::Known { key, fetched_at } => {
                    if now.saturating_sub(*fetched_at) < KEY_TTL_SECS {
                        return Ok(Arc::clone(key));
                    }
                    stale = Some((Arc::clone(key), *fetched_at));
                }
                Slot::Unknown { until } if now < *until => return Err(KeyError::NotFound),
                Slot::Unknown { .. } => {}
            }
        }

        let fetch = match self.inner.inflight.entry(kid.to_owned()) {
            Entry::Occupied(joined) => joined.get().clone(),
            Entry::Vacant(vacant) => {
                if stale.is_none() && !self.inner.admit_new_kid(now) {
                    return Err(KeyError::Unavailable(
                        "too many unknown verification key ids, try later".to_owned(),
                    ));
                }
                let fetch = Inner::start_fetch(&self.inner, kid.to_owned(), now);
                vacant.insert(fetch.clone());
                fetch
            }
        };

        match fetch.await {
            Err(KeyError::Unavailable(reason)) => match stale {
                Some((key, fetched_at)) if now.saturating_sub(fetched_at) < STALE_IF_ERROR_SECS => {
                    warn!(kid, %reason, "verification key refresh failed, using cached key");
                    Ok(key)
                }
                _ => Err(KeyError::Unavailable(reason)),
            },
            other => other,
        }
    }

    /// How many callers are waiting on the in-flight fetch of `kid` (tests synchronize
    /// on it instead of sleeping).
    #[cfg(test)]
    pub(crate) fn inflight_waiters(&self, kid: &str) -> usize {
        self.inner
            .inflight
            .get(kid)
            .and_then(|fetch| fetch.strong_count())
            // The map holds one handle itself.
            .map_or(0, |count| count.saturating_sub(1))
    }
}

impl Inner {
    fn admit_new_kid(&self, now: i64) -> bool {
        // A poisoned lock only means another thread panicked mid-update of two integers;
        // the values are still usable.
        let mut window = self
            .new_kid_window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if window.0 != now {
            *window = (now, 0);
        }
        if window.1 >= MAX_NEW_KID_FETCHES_PER_SEC {
            return false;
        }
        window.1 += 1;
        true
    }

    /// Starts the one fetch of `kid` that concurrent callers share. It installs its own
    /// result and leaves `inflight` when it completes; it holds the cache weakly so an
    /// abandoned fetch does not keep a dropped client alive.
    fn start_fetch(this: &Arc<Inner>, kid: String, now: i64) -> SharedFetch {
        let weak: Weak<Inner> = Arc::downgrade(this);
        let request = (this.fetcher)(kid.clone());
        async move {
            let outcome = classify(&kid, request.await);
            if let Some(inner) = weak.upgrade() {
                match &outcome {
                    Ok(key) => {
                        inner.slots.insert(
                            kid.clone(),
                            Slot::Known {
                                key: Arc::clone(key),
                                fetched_at: now,
                            },
                        );
                    }
                    Err(KeyError::NotFound) => inner.remember_unknown(kid.clone(), now),
                    // Keep whatever is cached: the caller may fall back to it.
                    Err(KeyError::Unavailable(_)) => {}
                }
                inner.inflight.remove(&kid);
            }
            outcome
        }
        .boxed()
        .shared()
    }

    fn remember_unknown(&self, kid: String, now: i64) {
        self.slots.insert(
            kid,
            Slot::Unknown {
                until: now.saturating_add(NEGATIVE_TTL_SECS),
            },
        );
        // The new-kid rate cap bounds growth; this bounds what stays after it expires.
        let negatives = self
            .slots
            .iter()
            .filter(|slot| matches!(slot.value(), Slot::Unknown { .. }))
            .take(NEGATIVE_PURGE_THRESHOLD + 1)
            .count();
        if negatives > NEGATIVE_PURGE_THRESHOLD {
            self.slots
                .retain(|_, slot| !matches!(slot, Slot::Unknown { until } if *until <= now));
        }
    }
}

/// Maps a fetch result to a key or to why there is none. A 400/404 answer (other than
/// bad credentials, which is our misconfiguration) means the provider does not know the
/// kid; everything else is an outage the provider will outlast by retrying the webhook.
fn classify(
    kid: &str,
    fetched: Result<PlaidJwk, ProviderError>,
) -> Result<Arc<VerificationKey>, KeyError> {
    match fetched {
        Ok(jwk) => decode_jwk(kid, &jwk).map(Arc::new).map_err(|reason| {
            warn!(kid, %reason, "provider returned an unusable verification key");
            KeyError::Unavailable(format!("unusable verification key: {reason}"))
        }),
        Err(ProviderError::Api { status, code, .. })
            if (status == 400 || status == 404) && code != INVALID_API_KEYS =>
        {
            Err(KeyError::NotFound)
        }
        Err(err) => {
            warn!(kid, code = err.code(), error = %err, "verification key fetch failed");
            Err(KeyError::Unavailable(format!(
                "verification key fetch failed: {err}"
            )))
        }
    }
}

/// Checks that a JWK is a P-256 signing key for `kid` and builds its uncompressed point.
pub(crate) fn decode_jwk(kid: &str, jwk: &PlaidJwk) -> Result<VerificationKey, String> {
    if jwk.kid != kid {
        return Err(format!("asked for kid {kid:?}, got {:?}", jwk.kid));
    }
    if jwk.kty != "EC" || jwk.crv != "P-256" || jwk.alg != "ES256" {
        return Err(format!(
            "expected an EC P-256 ES256 key, got kty={:?} crv={:?} alg={:?}",
            jwk.kty, jwk.crv, jwk.alg
        ));
    }
    let mut point = [0u8; 65];
    point[0] = 0x04;
    decode_coordinate(&jwk.x, &mut point[1..33]).map_err(|e| format!("x: {e}"))?;
    decode_coordinate(&jwk.y, &mut point[33..65]).map_err(|e| format!("y: {e}"))?;
    Ok(VerificationKey {
        point,
        expired_at: jwk.expired_at,
    })
}

fn decode_coordinate(encoded: &str, out: &mut [u8]) -> Result<(), String> {
    let mut buf = [0u8; 48];
    let len = B64URL
        .decode_slice(encoded, &mut buf)
        .map_err(|e| e.to_string())?;
    if len != out.len() {
        return Err(format!("expected {} bytes, got {len}", out.len()));
    }
    out.copy_from_slice(&buf[..len]);
    Ok(())
}
