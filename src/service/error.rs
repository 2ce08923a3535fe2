//! [`ServiceError`]: how a use-case fails, in terms a caller can act on. The HTTP layer
//! maps each variant to one status and a JSON body; other callers (the demo, the
//! benchmarks) read the message.

use crate::actors::RegistryError;
use crate::store::StoreError;

/// Why a use-case refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The caller's input is wrong (`code` is `invalid_field` or `invalid_query`).
    #[error("{message}")]
    Invalid {
        /// Stable machine-readable code.
        code: &'static str,
        /// What was wrong.
        message: String,
    },
    /// Nothing has this key.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what is stored (`conflict`, `unlinked`,
    /// `ambiguous_key`).
    #[error("{message}")]
    Conflict {
        /// Stable machine-readable code.
        code: &'static str,
        /// What conflicts.
        message: String,
    },
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The actors could not take the request.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A bug or an environment failure (a panicked task); logged, never shown.
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    /// A wrong field in the caller's input.
    pub fn invalid_field(message: impl Into<String>) -> Self {
        ServiceError::Invalid {
            code: "invalid_field",
            message: message.into(),
        }
    }

    /// A wrong query parameter.
    pub fn invalid_query(message: impl Into<String>) -> Self {
        ServiceError::Invalid {
            code: "invalid_query",
            message: message.into(),
        }
    }

    /// A conflict with what is stored.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ServiceError::Conflict {
            code,
            message: message.into(),
        }
    }
}
