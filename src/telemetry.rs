//! Tracing set-up: human-readable lines for a terminal, JSON lines for production.
//! The filter comes from `RUST_LOG` (default `info`). Secrets never reach the log:
//! access tokens and provider secrets are wrapped in types whose `Debug` is a mask.
//!
//! The line formats are defined once, in [`layer`], over any writer: [`init`] writes
//! them to stdout, and the log-redaction test writes the very same formats into memory,
//! so what it checks is what production prints.

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// The filter [`init`] installs: `RUST_LOG`, or `info` when it is unset or invalid.
pub fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The shipped line format `format`, writing to `writer`. Text lines are colored
/// unless `NO_COLOR` is set; JSON lines carry the event's fields at the top level
/// (`flatten_event`) with the current span and the span list, each with its fields.
pub fn layer<S, W>(format: LogFormat, writer: W) -> Box<dyn Layer<S> + Send + Sync + 'static>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // What `tracing_subscriber::fmt()` sets on its layer, so that `init` prints
    // exactly what it printed when it used that builder.
    let base = tracing_subscriber::fmt::layer()
        .log_internal_errors(true)
        .with_writer(writer);
    match format {
        LogFormat::Text => base.boxed(),
        LogFormat::Json => base.json().flatten_event(true).boxed(),
    }
}

/// Installs the global subscriber ([`env_filter`], then [`layer`] to stdout). Call
/// once, from `main`.
pub fn init(format: LogFormat) {
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = tracing_subscriber::registry()
        .with(env_filter())
        .with(layer(format, std::io::stdout))
        .try_init();
}

/// Records the account the current request or task is about on its span (the HTTP
/// request span declares the field empty), so every log line under it carries
/// `account_id`.
pub fn record_account(id: &crate::domain::AccountId) {
    tracing::Span::current().record("account_id", tracing::field::display(id));
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_are_flat_objects_with_their_spans() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new("info"))
            .with(layer(LogFormat::Json, move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("http_request", account_id = "acc_1");
            let _entered = span.enter();
            tracing::info!(attempt = 2, "sync failed");
            tracing::debug!("filtered out");
        });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(line["message"], "sync failed", "{line}");
        assert_eq!(line["attempt"], 2, "flattened: {line}");
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["span"]["account_id"], "acc_1", "{line}");
        assert_eq!(line["spans"][0]["name"], "http_request", "{line}");
    }
}
