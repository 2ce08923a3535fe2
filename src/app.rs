//! Application start-up.
