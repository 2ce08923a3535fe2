//! Tracing set-up: human-readable lines for a terminal, JSON lines for production,
//! both on stderr (stdout is the start banner's). The filter comes from `RUST_LOG`
//! (default `info`, with ractor's own per-actor spans off). Secrets never reach the
//! log: access tokens and provider secrets are wrapped in types whose `Debug` is a mask.
//!
//! The text line is acctor's own ([`TextLine`]): `time LEVEL span{k=v}:span{k=v}:
//! target: message k=v …`, every value plain (logfmt-quoted only when it has spaces or
//! quotes), colour only when the writer is a terminal, and a field an enclosing span
//! already shows (the account id of the account's span) not repeated on the event.
//!
//! The line formats are defined once, in [`layer`], over any writer: [`init`] writes
//! them to stderr, and the log tests write the very same formats into memory, so what
//! they check is what production prints.

use std::fmt;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
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

/// The filter [`init`] installs: `RUST_LOG`, or `info` (without ractor's spans, which
/// only carry its internal actor numbers) when it is unset or invalid.
pub fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ractor=warn"))
}

/// The shipped line format `format`, writing to `writer`; text lines are coloured when
/// `ansi` (a terminal, and `NO_COLOR` unset). JSON lines carry the event's fields at the
/// top level (`flatten_event`) with the current span and the span list, each with its
/// fields.
pub fn layer<S, W>(
    format: LogFormat,
    writer: W,
    ansi: bool,
) -> Box<dyn Layer<S> + Send + Sync + 'static>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let base = tracing_subscriber::fmt::layer()
        .log_internal_errors(true)
        .with_writer(writer);
    match format {
        LogFormat::Text => base
            .with_ansi(ansi)
            .fmt_fields(PlainFields)
            .event_format(TextLine { ansi })
            .boxed(),
        LogFormat::Json => base.json().flatten_event(true).boxed(),
    }
}

/// Installs the global subscriber ([`env_filter`], then [`layer`] to stderr, coloured
/// only on a terminal). Call once, from `main`.
pub fn init(format: LogFormat) {
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = tracing_subscriber::registry()
        .with(env_filter())
        .with(layer(format, std::io::stderr, ansi))
        .try_init();
}

/// Records the account the current request or task is about on its span (the HTTP
/// request span declares the field empty), so every log line under it carries
/// `account_id`.
pub fn record_account(id: &crate::domain::AccountId) {
    tracing::Span::current().record("account_id", tracing::field::display(id));
}

/// Writes `value` as a logfmt value: as it is, or quoted (with `"` and `\` escaped)
/// when it is empty or has spaces, quotes, `=` or control characters.
fn write_value(out: &mut impl fmt::Write, value: &str) -> fmt::Result {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '=' || c.is_control());
    if plain {
        return out.write_str(value);
    }
    out.write_char('"')?;
    for c in value.chars() {
        match c {
            '"' => out.write_str("\\\"")?,
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            c if c.is_control() => write!(out, "\\u{{{:x}}}", c as u32)?,
            c => out.write_char(c)?,
        }
    }
    out.write_char('"')
}

/// Collects fields as `key=value` pairs (the message apart), values plain.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    pairs: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
        } else {
            self.pairs.push((field.name(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%x` fields arrive here as their Display, messages as their text.
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = Some(text);
        } else {
            self.pairs.push((field.name(), text));
        }
    }
}

/// Span fields as plain `k=v` pairs, the same way [`TextLine`] writes event fields (so
/// it can tell a field the span already shows).
struct PlainFields;

impl<'writer> FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut collected = Fields::default();
        fields.record(&mut collected);
        let mut first = true;
        for (key, value) in collected.pairs {
            if !first {
                writer.write_char(' ')?;
            }
            first = false;
            write!(writer, "{key}=")?;
            write_value(&mut writer, &value)?;
        }
        Ok(())
    }
}

/// acctor's text line (see the module docs).
struct TextLine {
    ansi: bool,
}

impl TextLine {
    fn paint(&self, out: &mut Writer<'_>, code: &str, text: &str) -> fmt::Result {
        if self.ansi {
            write!(out, "\x1b[{code}m{text}\x1b[0m")
        } else {
            out.write_str(text)
        }
    }
}

impl<S, N> FormatEvent<S, N> for TextLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let now = chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        self.paint(&mut writer, "2", &now)?;
        let level = meta.level();
        let colour = match *level {
            tracing::Level::ERROR => "31",
            tracing::Level::WARN => "33",
            tracing::Level::INFO => "32",
            _ => "2",
        };
        writer.write_char(' ')?;
        self.paint(&mut writer, colour, &format!("{level:>5}"))?;
        writer.write_char(' ')?;
        // What the spans already show, to leave out of the event's own fields.
        let mut shown: Vec<String> = Vec::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let fields = extensions
                    .get::<FormattedFields<N>>()
                    .map_or("", |f| f.fields.as_str());
                writer.write_str(span.name())?;
                if !fields.is_empty() {
                    write!(writer, "{{{fields}}}")?;
                    shown.extend(fields.split(' ').map(str::to_owned));
                }
                writer.write_str(": ")?;
            }
        }
        self.paint(&mut writer, "2", meta.target())?;
        writer.write_str(": ")?;
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let Some(message) = &fields.message {
            writer.write_str(message)?;
        }
        for (key, value) in &fields.pairs {
            let mut pair = format!("{key}=");
            write_value(&mut pair, value)?;
            if shown.contains(&pair) {
                continue;
            }
            write!(writer, " {pair}")?;
        }
        writeln!(writer)
    }
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

    fn text_lines(ansi: bool, emit: impl FnOnce()) -> String {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new("info"))
            .with(layer(LogFormat::Text, move || writer.clone(), ansi));
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        text
    }

    /// Strips the timestamp (the only part that changes from run to run).
    fn without_time(line: &str) -> &str {
        line.split_once(' ').map_or(line, |(_, rest)| rest)
    }

    #[test]
    fn text_lines_are_plain_and_say_each_field_once() {
        let text = text_lines(false, || {
            let span =
                tracing::info_span!("account", account_id = "acc_1", alias = "ada@example.com");
            let _entered = span.enter();
            let inner = tracing::info_span!("sync", reason = "webhook");
            let _inner = inner.enter();
            tracing::warn!(
                account_id = "acc_1",
                attempt = 2,
                error = "500 INTERNAL_SERVER_ERROR: boom",
                code = %"X=Y",
                "sync failed"
            );
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert_eq!(
            without_time(lines[0]),
            " WARN account{account_id=acc_1 alias=ada@example.com}: sync{reason=webhook}: \
             acctor::telemetry::tests: sync failed attempt=2 \
             error=\"500 INTERNAL_SERVER_ERROR: boom\" code=\"X=Y\""
        );
        assert!(!text.contains('\x1b'), "no colour off a terminal: {text:?}");
    }

    #[test]
    fn an_event_outside_a_span_keeps_its_account_id_and_colour_is_opt_in() {
        let text = text_lines(true, || {
            tracing::info!(account_id = "acc_2", "account linked")
        });
        assert!(text.contains("account linked"), "{text}");
        assert!(text.contains("account_id=acc_2"), "{text}");
        assert!(text.contains("\x1b[32m INFO\x1b[0m"), "{text:?}");
    }

    #[test]
    fn values_with_quotes_and_newlines_stay_on_one_line() {
        let text = text_lines(false, || tracing::info!(body = "a \"b\"\nc", "odd"));
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains(r#"body="a \"b\"\nc""#), "{text}");
    }

    #[test]
    fn json_lines_are_flat_objects_with_their_spans() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new("info"))
            .with(layer(LogFormat::Json, move || writer.clone(), false));
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
