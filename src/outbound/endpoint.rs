//! Where messages go: each [`Destination`] of the outbox resolves to an [`Endpoint`]
//! (URL, signing key, request timeout, retry policy, max age) through [`Endpoints`].
//!
//! The sender knows nothing of alerts or subscribers: it asks [`Endpoints`] for a
//! message's endpoint and delivers to it. A user of the outbox brings its destination
//! variant and says how it resolves: alerts from the `alerts.*` settings
//! ([`super::alerts::endpoint`]); subscriber webhooks, whose endpoints live in the
//! store and change at run time, will resolve there, which is why this is a trait and
//! endpoints are shared (`Arc`) rather than borrowed.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretBox;

use super::signing::origin_of;
use crate::config::Settings;
use crate::store::Destination;

/// Why the outbound side could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// A destination's secret is not `whsec_` + base64 (the field is named).
    #[error("{0} must be whsec_ followed by a base64 key")]
    BadSecret(&'static str),
    /// The HTTP client could not be built.
    #[error("outbound client: {0}")]
    Client(String),
}

/// One receiver of messages and how to deliver to it.
pub struct Endpoint {
    /// Where messages are POSTed (may carry a secret: log only its origin).
    pub url: String,
    /// The Standard Webhooks signing key, decoded from its `whsec_` secret.
    pub key: SecretBox<Vec<u8>>,
    /// Timeout of one delivery attempt (connecting included).
    pub request_timeout: Duration,
    /// First retry delay after a failed attempt; doubles per attempt (full jitter).
    pub retry_initial: Duration,
    /// Retry delay cap.
    pub retry_max: Duration,
    /// A message not delivered within this long after it was enqueued is dropped.
    pub max_age: Duration,
    /// What one message is called in log lines (`alert`).
    pub noun: &'static str,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &origin_of(&self.url))
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// Resolves a message's destination to its endpoint; `None` when the destination is not
/// configured (the sender keeps such messages for later).
pub trait Endpoints: Send + Sync {
    /// The endpoint of `destination`, if it has one now.
    fn endpoint(&self, destination: &Destination) -> Option<Arc<Endpoint>>;
}

/// The endpoints configured in the settings, one per destination kind.
#[derive(Debug)]
pub struct Destinations {
    /// [`Destination::Alerts`]: the `alerts.*` settings.
    alerts: Option<Arc<Endpoint>>,
}

impl Destinations {
    /// The destinations `settings` turn on; `None` when none is (then nothing is sent
    /// and no sender runs).
    pub fn from_settings(settings: &Settings) -> Result<Option<Destinations>, OutboundError> {
        let alerts = super::alerts::endpoint(&settings.alerts)?.map(Arc::new);
        Ok(alerts.is_some().then_some(Destinations { alerts }))
    }

    /// Only the alerts' endpoint (tests build it from their own `AlertSettings`).
    #[cfg(test)]
    pub(crate) fn with_alerts(endpoint: Endpoint) -> Destinations {
        Destinations {
            alerts: Some(Arc::new(endpoint)),
        }
    }

    /// How long the sender waits after a pass that failed (the store could not be read
    /// or written): the shortest first retry delay of the configured endpoints.
    pub fn error_wait(&self) -> Duration {
        self.alerts
            .iter()
            .map(|endpoint| endpoint.retry_initial)
            .min()
            .unwrap_or(Duration::from_secs(1))
    }

    /// Where the alerts go, if they are on (for the start-up log line).
    pub fn alerts(&self) -> Option<&Endpoint> {
        self.alerts.as_deref()
    }
}

impl Endpoints for Destinations {
    fn endpoint(&self, destination: &Destination) -> Option<Arc<Endpoint>> {
        match destination {
            Destination::Alerts => self.alerts.clone(),
            #[cfg(test)]
            Destination::Test(_) => None,
        }
    }
}
