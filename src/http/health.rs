//! Liveness and readiness, both public (probes hold no token).
//!
//! `/healthz` answers as long as the process serves HTTP. `/readyz` answers 200 only if
//! the server can do its job right now: it is not shutting down, the background actors
//! it depends on (supervisor, sweeper, whatever else registers with [`Readiness`]) are
//! running, and the store accepts a real write and makes it durable (a success is
//! reused for a second, so a public probe cannot be used to force an fsync per
//! request). Otherwise 503 with every check's result, so an operator sees which one
//! failed.

use std::sync::RwLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use ractor::{ActorCell, ActorStatus};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::{ApiError, ApiQuery, AppState, NoQuery};

/// How long the store probe may take (a write plus a group-commit round) before the
/// store counts as not writable.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A successful store probe is trusted this long (probes closer together reuse it).
const STORE_PROBE_REUSE: Duration = Duration::from_secs(1);

/// The background actors `/readyz` checks. Register each long-lived actor the server
/// cannot work without, by name, when it is spawned.
#[derive(Default)]
pub struct Readiness {
    actors: RwLock<Vec<(&'static str, ActorCell)>>,
    /// When the store probe last succeeded: `/readyz` is public, and without this any
    /// caller could force a write and an fsync per request. Failures are never reused.
    last_store_ok: std::sync::Mutex<Option<std::time::Instant>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("actors", &self.actor_names())
            .finish()
    }
}

impl Readiness {
    /// Nothing watched yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Watches `cell` under `name`: `/readyz` fails while it is not running.
    pub fn watch(&self, name: &'static str, cell: ActorCell) {
        let mut actors = self.actors.write().unwrap_or_else(|p| p.into_inner());
        actors.retain(|(n, _)| *n != name);
        actors.push((name, cell));
    }

    /// The watched actors' names.
    pub fn actor_names(&self) -> Vec<&'static str> {
        let actors = self.actors.read().unwrap_or_else(|p| p.into_inner());
        actors.iter().map(|(name, _)| *name).collect()
    }

    /// The watched actor named `name` (tests stop it to see `/readyz` fail).
    pub fn actor(&self, name: &str) -> Option<ActorCell> {
        let actors = self.actors.read().unwrap_or_else(|p| p.into_inner());
        actors
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c.clone())
    }

    /// Each watched actor with whether it is running.
    fn actor_checks(&self) -> Vec<ActorCheck> {
        let actors = self.actors.read().unwrap_or_else(|p| p.into_inner());
        actors
            .iter()
            .map(|(name, cell)| {
                let status = cell.get_status();
                ActorCheck {
                    name: (*name).to_string(),
                    running: matches!(status, ActorStatus::Running | ActorStatus::Upgrading),
                    status: format!("{status:?}").to_ascii_lowercase(),
                }
            })
            .collect()
    }
}

/// `/healthz` and `/readyz`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// The liveness answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Liveness {
    /// Always `ok`.
    pub status: String,
}

/// The process is up and serving HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    operation_id = "healthz",
    security(()),
    params(NoQuery),
    responses(
        (status = 200, description = "The process is up", body = Liveness),
        (status = 400, description = "An unknown query parameter (this endpoint takes none)", body = ErrorBody),
    )
)]
async fn healthz(query: Result<ApiQuery<NoQuery>, ApiError>) -> Result<Json<Liveness>, ApiError> {
    query?;
    Ok(Json(Liveness {
        status: "ok".to_string(),
    }))
}

/// The readiness answer, the same shape for 200 and 503.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadinessReport {
    /// `ready` or `not_ready`.
    pub status: String,
    /// The checks that failed: any of `shutdown`, `actors`, `store`.
    pub failed: Vec<String>,
    /// Whether shutdown has begun.
    pub shutting_down: bool,
    /// The watched background actors.
    pub actors: Vec<ActorCheck>,
    /// The store write probe.
    pub store: StoreCheck,
    /// Pending inbox entries across all accounts.
    pub inbox_depth: u64,
    /// Live account actors.
    pub active_actors: usize,
}

/// One watched actor.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ActorCheck {
    /// Its role, e.g. `supervisor`, `sweeper`.
    pub name: String,
    /// Whether it is running.
    pub running: bool,
    /// Its ractor status, lower case (`running`, `stopped`…).
    pub status: String,
}

/// The store write probe's result.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StoreCheck {
    /// Whether a write was accepted and made durable.
    pub writable: bool,
    /// Milliseconds the write and its flush took (0: a probe less than a second old
    /// was reused).
    pub probe_ms: u64,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Ready to take webhooks and sync: not shutting down, background actors running, store
/// writable (a real write, made durable).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    operation_id = "readyz",
    security(()),
    params(NoQuery),
    responses(
        (status = 200, description = "Ready", body = ReadinessReport),
        (status = 400, description = "An unknown query parameter (this endpoint takes none)", body = ErrorBody),
        (status = 503, description = "Not ready; `failed` names the checks that failed", body = ReadinessReport),
    )
)]
async fn readyz(
    State(state): State<AppState>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
) -> (StatusCode, Json<ReadinessReport>) {
    let shutting_down = state.is_shutting_down();
    let actors = state.readiness.actor_checks();
    // Probed even while shutting down: the store closes only after HTTP has stopped,
    // so a failure here is a real one and is reported as such.
    let store = probe_store(&state).await;
    let mut failed = Vec::new();
    if shutting_down {
        failed.push("shutdown".to_string());
    }
    if actors.iter().any(|a| !a.running) {
        failed.push("actors".to_string());
    }
    if !store.writable {
        failed.push("store".to_string());
    }
    let status = if failed.is_empty() {
        StatusCode::OK
    } else {
        tracing::debug!(failed = %failed.join(","), "not ready");
        StatusCode::SERVICE_UNAVAILABLE
    };
    let report = ReadinessReport {
        status: if failed.is_empty() {
            "ready"
        } else {
            "not_ready"
        }
        .to_string(),
        failed,
        shutting_down,
        actors,
        store,
        inbox_depth: state.ctx.store.run(|s| s.inbox_depth()).await.unwrap_or(0),
        active_actors: state.ctx.registry.stats().active,
    };
    (status, Json(report))
}

async fn probe_store(state: &AppState) -> StoreCheck {
    let started = std::time::Instant::now();
    let recent = {
        let last = state
            .readiness
            .last_store_ok
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        last.is_some_and(|at| at.elapsed() < STORE_PROBE_REUSE)
    };
    if recent {
        return StoreCheck {
            writable: true,
            probe_ms: 0,
            error: None,
        };
    }
    let store = state.ctx.store.clone();
    let probe = async move {
        // A sled write can wait on its process-wide lock: the facade runs it off the
        // async workers.
        store
            .run(|s| s.write_probe())
            .await
            .map_err(|e| e.to_string())?;
        store.durable().await.map_err(|e| e.to_string())
    };
    let result = match tokio::time::timeout(STORE_PROBE_TIMEOUT, probe).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "write not durable within {}ms",
            STORE_PROBE_TIMEOUT.as_millis()
        )),
    };
    let probe_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match result {
        Ok(()) => {
            *state
                .readiness
                .last_store_ok
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(started);
            StoreCheck {
                writable: true,
                probe_ms,
                error: None,
            }
        }
        Err(error) => {
            tracing::warn!(%error, "readiness store probe failed");
            StoreCheck {
                writable: false,
                probe_ms,
                error: Some(error),
            }
        }
    }
}
