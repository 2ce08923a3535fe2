//! The built-in simulated providers.
