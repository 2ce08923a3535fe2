//! Actors: one [`account::AccountActor`] per linked account, the [`registry::Registry`]
//! that activates and passivates them, the [`supervisor::Supervisor`] that is told
//! when one dies, and the [`sweeper::SweeperActor`] that re-drives due retries, polls
//! and stale inbox entries. One actor per file.
//!
//! What the actors depend on (store, cursor sources, settings, sync tunables, metrics,
//! clock, the alert wake-up) is one explicit [`context::ActorContext`], built by
//! `app.rs`; the registry is built from it and hands it to every actor it activates, so
//! the registry is about refs and nothing else. Beside the actors:
//! - [`incidents`]: opening and resolving an account's incidents as its marks change;
//! - [`reauth`]: the needs-reauth check the sync task runs around a sync;
//! - [`resume`]: an operator's resume and a relink, which lift a mark and tell the actor.
//!
//! Layering: `service/` calls in; the actors call down into [`crate::sync`] (what one
//! sync means for a provider), [`crate::providers`] and [`crate::store`], never up.

pub mod account;
pub mod context;
pub mod incidents;
pub mod operation;
pub mod reauth;
pub mod registry;
pub mod resume;
pub mod supervisor;
pub mod sweeper;

pub use account::{AccountMessage, ActorSnapshot, SyncReason};
pub use context::ActorContext;
pub use registry::{Registry, RegistryError};
