//! Actors: one [`account::AccountActor`] per linked account, the [`registry::Registry`]
//! that activates and passivates them, and the [`supervisor::Supervisor`] that is told
//! when one dies, and the [`sweeper::SweeperActor`] that re-drives due retries and
//! stale inbox entries. One actor per file.

pub mod account;
pub mod reauth;
pub mod registry;
pub mod supervisor;
pub mod sweeper;

pub use account::{AccountMessage, ActorSnapshot, SyncReason};
pub use registry::{Registry, RegistryError};
