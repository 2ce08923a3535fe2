//! Actors: one [`account::AccountActor`] per linked account, the [`registry::Registry`]
//! that activates and passivates them, and the [`supervisor::Supervisor`] that is told
//! when one dies, and the [`sweeper::SweeperActor`] that re-drives due retries and
//! stale inbox entries. One actor per file.

pub mod account;
pub mod context;
pub mod incidents;
pub mod reauth;
pub mod registry;
pub mod resume;
pub mod supervisor;
pub mod sweeper;

pub use account::{AccountMessage, ActorSnapshot, SyncReason};
pub use context::ActorContext;
pub use registry::{Registry, RegistryError};
