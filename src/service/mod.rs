//! Use-cases: what acctor does when asked, independent of how it was asked. `http/`
//! translates requests into calls here and results back into answers; the rules (which
//! plugin, in which order, what makes an event durable, whom to tell) live here, so a
//! handler holds none and another front end (a queue consumer, a CLI) could reuse them.
//!
//! - [`ingest`]: a provider's webhook, from its raw bytes to the acknowledgement.

pub mod ingest;
