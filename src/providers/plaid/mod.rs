//! Plaid: the client (delta pages, reconcile window, webhook verification).

pub mod wire;
