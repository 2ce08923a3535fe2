//! Fuzz properties of the configuration loader (see `crate::fuzz_support` for the short
//! and long profiles): arbitrary and mutated TOML documents never panic; any value for
//! a known key either loads or is refused with an error naming that key (or the key it
//! is checked against); secrets never appear in an error.
//!
//! The environment is process-global and tests run in parallel, so no test here sets a
//! variable: values arrive through `Serialized` providers parsed exactly as figment's
//! `Env` parses a variable's text (`Value::from_str`), merged where `load` merges the
//! environment.

use figment::providers::{Format, Toml};
use figment::Figment;
use proptest::prelude::*;

use super::{ConfigError, EnvLayer, Settings, DEFAULT_TOML, SECRET_KEYS};
use crate::fuzz_support::{fuzz, mutated, mutations};

/// Every key of [`Settings`], as `section.key`.
const KEYS: &[&str] = &[
    "server.listen",
    "server.webhook_body_limit_bytes",
    "server.api_body_limit_bytes",
    "server.max_inbox_depth",
    "server.admin_token",
    "store.data_dir",
    "store.cache_capacity_bytes",
    "store.dedup_ttl",
    "store.group_commit_window",
    "plaid.base_url",
    "plaid.client_id",
    "plaid.secret",
    "plaid.request_timeout",
    "plaid.sync_page_size",
    "plaid.window_page_size",
    "plaid.max_webhook_age",
    "plaid.sync_budget_per_minute",
    "plaid.sync_budget_burst",
    "plaid.page_retries",
    "plaid.page_retry_delay",
    "actors.passivate_after",
    "actors.call_timeout",
    "actors.shutdown_grace",
    "actors.sync_retry_initial",
    "actors.sync_retry_max",
    "actors.min_sync_interval",
    "actors.restart_backoff_initial",
    "actors.restart_backoff_max",
    "actors.max_restarts",
    "actors.restart_window",
    "actors.max_sync_attempts",
    "actors.rate_limit_backoff",
    "sandbox.embedded",
    "sandbox.listen",
    "sandbox.client_id",
    "sandbox.secret",
    "sandbox.webhook_url",
    "sandbox.demo_items",
    "sandbox.demo_history",
    "sandbox.demo_tick",
    "sandbox.seed",
    "sweeper.tick",
    "sweeper.stale_inbox_after",
    "sweeper.batch",
    "sweeper.poll_interval",
    "alerts.url",
    "alerts.secret",
    "alerts.request_timeout",
    "alerts.retry_initial",
    "alerts.retry_max",
    "alerts.max_age",
];

/// Keys whose value is checked against another's: an error about the relation names
/// one of the pair.
fn related(key: &str) -> &'static [&'static str] {
    match key {
        "actors.sync_retry_max" => &["actors.sync_retry_initial"],
        "actors.restart_backoff_max" => {
            &["actors.restart_backoff_initial", "actors.restart_window"]
        }
        "actors.restart_backoff_initial" => &["actors.restart_window"],
        "sweeper.tick" => &["sweeper.poll_interval"],
        "sandbox.embedded" => &["plaid.base_url"],
        "alerts.url" => &["alerts.secret"],
        "alerts.retry_max" => &["alerts.retry_initial"],
        _ => &[],
    }
}

/// A valid alert webhook configuration, so that the alert keys are validated too.
const ALERTS_ON: &str = r#"
[alerts]
url = "https://alerts.example/hook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"#;

fn base(alerts_on: bool) -> Figment {
    let figment = Figment::from(Toml::string(DEFAULT_TOML));
    if alerts_on {
        figment.merge(Toml::string(ALERTS_ON))
    } else {
        figment
    }
}

/// `ACCTOR__SECTION__KEY=<text>`, through the loader's own environment layer.
fn env_value(key: &str, text: &str) -> EnvLayer {
    EnvLayer::from_vars([(key.to_owned(), text.to_owned())])
}

/// `text` as a TOML basic string (JSON's quoting leaves DEL raw, which TOML refuses).
fn toml_string(text: &str) -> String {
    let mut quoted = String::from("\"");
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// Texts a person could put in a variable or a file for any key.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(&["0", "0s", "0ms", "1ns", "1h", "25h", "1000000000y", ""][..])
            .prop_map(str::to_owned),
        "[0-9]{1,25}",
        "-[0-9]{1,20}",
        "[0-9]{1,8}(ns|us|ms|s|m|h|d|w|y| years)",
        "[0-9]{1,20}(ms|s|m|h|d|y)",
        "(true|false)",
        "[0-9.eE+-]{1,12}",
        "(127.0.0.1|0.0.0.0|\\[::1\\]|localhost):[0-9]{0,6}",
        "(https?://|ftp://|)[a-z.]{0,12}",
        "whsec_[A-Za-z0-9+/=]{0,90}",
        "\\[[0-9a-z, ]{0,12}\\]",
        "\\{[0-9a-z=, ]{0,12}\\}",
        // Quotes, escapes and non-ASCII: what figment's own string parsing trips on.
        "\"?[a-z\u{e9}\u{a1}\\\\\" ]{0,10}\"?",
        ".{0,24}",
    ]
}

/// A TOML literal of any type.
fn toml_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        text().prop_map(|t| toml_string(&t)),
        proptest::collection::vec(any::<u32>(), 0..3).prop_map(|v| format!("{v:?}")),
        (any::<u16>(), text())
            .prop_map(|(n, t)| { format!("{{ n = {n}, t = {} }}", toml_string(&t)) }),
    ]
}

/// Whether `message` names `key` or a key it is checked against.
/// Whether `message` names `key` or a key it is checked against (an environment
/// variable's error names it in capitals, as `SECTION.KEY`).
fn names(message: &str, key: &str) -> bool {
    let message = message.to_ascii_lowercase();
    std::iter::once(key)
        .chain(related(key).iter().copied())
        .any(|name| message.contains(name))
}

#[derive(Clone, Debug)]
enum Source {
    /// As `ACCTOR__SECTION__KEY=<text>`.
    Env(String),
    /// As `key = <literal>` in the `[section]` of a config file.
    File(String),
}

#[test]
fn fuzz_a_bad_value_for_a_known_key_is_an_error_naming_it() {
    let source = prop_oneof![
        text().prop_map(Source::Env),
        toml_literal().prop_map(Source::File)
    ];
    let strategy = (proptest::sample::select(KEYS), source, any::<bool>());
    fuzz(
        "config::one_key",
        512,
        strategy,
        |(key, source, alerts_on)| {
            let figment = match &source {
                Source::Env(text) => base(alerts_on).merge(env_value(key, text)),
                Source::File(literal) => {
                    let (section, name) = key.split_once('.').unwrap_or((key, key));
                    let file = format!("[{section}]\n{name} = {literal}\n");
                    base(alerts_on).merge(Toml::string(&file))
                }
            };
            if let Err(err) = Settings::from_figment(figment) {
                let message = err.to_string();
                prop_assert!(names(&message, key), "{key}: {message}");
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_secrets_never_appear_in_errors() {
    let secret = prop_oneof![
        "[!-~]{16,40}",
        "[1-9][0-9]{15,17}",
        "whsec_[A-Za-z0-9+/]{32,60}"
    ];
    let strategy = (
        proptest::sample::select(SECRET_KEYS),
        secret,
        any::<bool>(),
        any::<bool>(),
    );
    fuzz(
        "config::secrets",
        256,
        strategy,
        |(key, secret, in_file, alerts_on)| {
            // In a file, unquoted: a number of the wrong type. (Text that is not TOML
            // at all is a syntax error, which quotes the line of the user's own file.)
            let in_file = in_file && secret.bytes().all(|b| b.is_ascii_digit());
            let figment = if in_file {
                let (section, name) = key.split_once('.').unwrap_or((key, key));
                base(alerts_on).merge(Toml::string(&format!("[{section}]\n{name} = {secret}\n")))
            } else {
                base(alerts_on).merge(env_value(key, &secret))
            };
            if let Err(err) = Settings::from_figment(figment) {
                let message = err.to_string();
                prop_assert!(!message.contains(&secret), "{key}: {message}");
            }
            Ok(())
        },
    );
}

/// Text settings that take any text, and where each lands.
const FREE_TEXT: &[&str] = &[
    "plaid.client_id",
    "plaid.secret",
    "sandbox.client_id",
    "sandbox.secret",
    "server.admin_token",
];

fn text_setting(settings: &Settings, key: &str) -> Option<String> {
    use secrecy::ExposeSecret;
    Some(match key {
        "plaid.client_id" => settings.plaid.client_id.clone(),
        "plaid.secret" => settings.plaid.secret.expose_secret().to_owned(),
        "sandbox.client_id" => settings.sandbox.client_id.clone(),
        "sandbox.secret" => settings.sandbox.secret.expose_secret().to_owned(),
        "server.admin_token" => settings
            .server
            .admin_token
            .as_ref()?
            .expose_secret()
            .to_owned(),
        _ => return None,
    })
}

#[test]
fn fuzz_text_settings_take_the_environment_text_verbatim() {
    // What figment would read as a number, a bool, an array or a dict included.
    let value = prop_oneof![
        "[!-~]{16,40}",
        "[0-9]{16,30}",
        "(true|false)[a-z]{12}",
        text()
    ];
    let strategy = (proptest::sample::select(FREE_TEXT), value);
    fuzz("config::env_text", 256, strategy, |(key, value)| {
        let loaded = Settings::from_figment(base(false).merge(env_value(key, &value)));
        match loaded {
            Ok(settings) => prop_assert_eq!(text_setting(&settings, key), Some(value)),
            // Only the admin token has rules (16+ characters, no whitespace).
            Err(err) => {
                let message = err.to_string();
                prop_assert!(message.contains("server.admin_token"), "{key}: {message}");
                prop_assert!(
                    value.chars().count() < 16
                        || value.chars().any(|c| c.is_whitespace() || c.is_control())
                );
            }
        }
        Ok(())
    });
}

/// Lines of a config file: sections and keys acctor knows, others, and noise.
fn toml_document() -> impl Strategy<Value = String> {
    let section = prop_oneof![
        proptest::sample::select(
            &["server", "store", "plaid", "actors", "sandbox", "sweeper", "alerts"][..]
        )
        .prop_map(str::to_owned),
        "[a-z_.]{0,10}",
    ];
    let key = prop_oneof![
        proptest::sample::select(KEYS)
            .prop_map(|k| k.split_once('.').map_or(k, |(_, n)| n).to_owned()),
        "[a-z_]{1,10}",
    ];
    let line = prop_oneof![
        section.clone().prop_map(|s| format!("[{s}]")),
        section.prop_map(|s| format!("[[{s}]]")),
        (key.clone(), toml_literal()).prop_map(|(k, v)| format!("{k} = {v}")),
        (key, ".{0,16}").prop_map(|(k, v)| format!("{k} = {v}")),
        ".{0,32}",
    ];
    proptest::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
}

#[test]
fn fuzz_arbitrary_config_files_never_panic() {
    fuzz(
        "config::documents",
        512,
        (toml_document(), any::<bool>()),
        |(doc, alerts_on)| {
            check_loaded(Settings::from_figment(
                base(alerts_on).merge(Toml::string(&doc)),
            ))
        },
    );
}

#[test]
fn fuzz_mutated_default_config_never_panics() {
    fuzz("config::mutated_defaults", 256, mutations(), |mutations| {
        let doc = mutated(DEFAULT_TOML.as_bytes(), &mutations);
        let doc = String::from_utf8_lossy(&doc);
        check_loaded(Settings::from_figment(Figment::from(Toml::string(&doc))))
    });
}

/// Whatever loads is valid; whatever is refused says it is configuration.
fn check_loaded(loaded: Result<Settings, ConfigError>) -> Result<(), TestCaseError> {
    match loaded {
        Ok(settings) => prop_assert!(settings.validate().is_ok()),
        Err(err) => prop_assert!(err.to_string().starts_with("invalid configuration")),
    }
    Ok(())
}

/// Found by `config::one_key`: a zero `alerts.request_timeout` or `alerts.max_age` was
/// refused as an error about `alerts.retry_initial`.
#[test]
fn regression_each_alert_delay_is_named_in_its_own_error() {
    for key in [
        "alerts.request_timeout",
        "alerts.retry_initial",
        "alerts.max_age",
    ] {
        let err = Settings::from_figment(base(true).merge(env_value(key, "0s")))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(key), "{key}: {err:?}");
    }
}

/// Found by `config::secrets`: figment reads `ACCTOR__SERVER__ADMIN_TOKEN=1234…` as a
/// number, which the text setting refused, quoting the token in the error. Text settings
/// now take the variable's text as it is, and a secret's load error never quotes it.
#[test]
fn regression_an_all_digit_secret_loads_from_the_environment_and_is_never_quoted() {
    use secrecy::ExposeSecret;
    let token = "1234567890123456";
    let settings =
        Settings::from_figment(base(false).merge(env_value("server.admin_token", token)))
            .expect("an all-digit token of 16 characters is valid");
    let loaded = settings
        .server
        .admin_token
        .as_ref()
        .map(|t| t.expose_secret().to_owned());
    assert_eq!(loaded.as_deref(), Some(token));
    let settings = Settings::from_figment(base(false).merge(env_value("plaid.client_id", "0042")))
        .expect("an all-digit client id is valid");
    assert_eq!(settings.plaid.client_id, "0042");
    // A number in a file is still the wrong type, and the error does not quote it.
    let file = format!("[server]\nadmin_token = {token}\n");
    let err = Settings::from_figment(base(false).merge(Toml::string(&file)))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("server.admin_token"), "{err}");
    assert!(!err.contains(token), "{err}");
}

/// Found by `config::one_key` (long profile): figment's own parsing of a variable's
/// text panics on a backslash after a non-ASCII character (it slices a string by char
/// index); such text is now kept as text, and refused with the key named.
#[test]
fn regression_non_ascii_text_with_a_backslash_is_an_error_not_a_panic() {
    for text in ["¡\\ ", "\"é\\n\"", "[\"ü\\t\"]"] {
        let err = Settings::from_figment(base(false).merge(env_value("server.listen", text)))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(names(&err, "server.listen"), "{text:?}: {err}");
    }
}
