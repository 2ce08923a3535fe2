//! Admin authentication: every route except the public ones needs
//! `Authorization: Bearer <token>`.
//!
//! The policy is default-deny: [`require_admin`] wraps the whole router (fallback
//! included), and only the paths [`is_public`] names pass without a token. A route
//! someone adds later is therefore protected unless it is deliberately made public here.
//! Public are: provider webhooks (they carry provider signatures instead), `/healthz`,
//! `/readyz` and `/metrics` (probes and scrapers hold no token), and the dashboard's
//! static shell (`/dashboard` and its two files, by exact path): the page holds no
//! data, reads the token from its URL fragment and calls the admin API with it. Exact
//! paths rather than a `/dashboard/` prefix, so that a data route added under
//! `/dashboard/` later is admin-only like any other.
//!
//! The token comes from `server.admin_token`; when that is unset, a random one is
//! generated at first start into `<data_dir>/admin-token` (mode 0600) and reused
//! afterwards, so a restart does not lock operators out. The comparison is constant
//! time over SHA-256 digests, so neither content nor length leaks through timing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::config::Settings;

/// The file under the data dir that holds a generated admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// The prefix of generated tokens: makes a leaked one recognizable to secret scanners.
const TOKEN_PREFIX: &str = "acctor_admin_";

/// Whether `path` is served without the admin token: the exact paths above, and
/// `/webhooks/{provider}` (one non-empty segment). Anything else (including paths that
/// match no route) needs the token, so an unauthenticated caller cannot even learn
/// which routes exist.
pub fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/healthz"
            | "/readyz"
            | "/metrics"
            | "/dashboard"
            | "/dashboard/dashboard.css"
            | "/dashboard/dashboard.js"
    ) || path
        .strip_prefix("/webhooks/")
        .is_some_and(|provider| !provider.is_empty() && !provider.contains('/'))
        // A Stripe account's own endpoint: `/webhooks/stripe/{account}`.
        || path
            .strip_prefix("/webhooks/stripe/")
            .is_some_and(|account| !account.is_empty() && !account.contains('/'))
}

/// The expected token, kept only as its digest.
#[derive(Clone)]
pub struct AdminAuth {
    /// SHA-256 of the token; `None` when no token is configured, and then every admin
    /// request is refused (fail closed).
    digest: Option<[u8; 32]>,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("configured", &self.digest.is_some())
            .finish()
    }
}

impl AdminAuth {
    /// Expects `token`.
    pub fn new(token: &SecretString) -> Self {
        AdminAuth {
            digest: Some(digest(token.expose_secret())),
        }
    }

    /// From `server.admin_token` (resolved by [`resolve_admin_token`] at start); with
    /// none set, refuses every admin request.
    pub fn from_settings(settings: &Settings) -> Self {
        match &settings.server.admin_token {
            Some(token) => Self::new(token),
            None => AdminAuth { digest: None },
        }
    }

    /// Whether the `Authorization` header value carries the expected bearer token.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let (Some(expected), Some(value)) = (&self.digest, authorization) else {
            return false;
        };
        let Some(presented) = bearer_token(value) else {
            return false;
        };
        bool::from(digest(presented).ct_eq(expected))
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The credentials of `Bearer <token>` (scheme case-insensitive, RFC 7235).
fn bearer_token(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// Middleware: public paths pass; everything else needs the admin bearer token, or
/// gets a 401 JSON error with `WWW-Authenticate: Bearer`.
pub async fn require_admin(
    State(auth): State<Arc<AdminAuth>>,
    request: Request,
    next: Next,
) -> Response {
    if is_public(request.uri().path()) {
        return next.run(request).await;
    }
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if auth.accepts(authorization) {
        return next.run(request).await;
    }
    let message = if authorization.is_none() {
        "this route needs an admin token: Authorization: Bearer <token>"
    } else {
        "the admin token is wrong"
    };
    tracing::debug!(path = %request.uri().path(), "admin request refused");
    ApiError::unauthorized(message).into_response()
}

/// Where the admin token in effect came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminTokenSource {
    /// `server.admin_token` (file or `ACCTOR__SERVER__ADMIN_TOKEN`).
    Config,
    /// Generated earlier and read back from this file.
    File(PathBuf),
    /// Generated now and written to this file.
    Generated(PathBuf),
}

impl AdminTokenSource {
    /// The token file, when the token lives in one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            AdminTokenSource::Config => None,
            AdminTokenSource::File(path) | AdminTokenSource::Generated(path) => Some(path),
        }
    }
}

/// Why the admin token could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    /// The token file could not be read, created or written.
    #[error("admin token file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The token file exists but holds no usable token.
    #[error("admin token file {0} is empty or not UTF-8; delete it to generate a new token")]
    Invalid(PathBuf),
}

/// Makes sure `settings.server.admin_token` is set: kept if configured, else read from
/// `<data_dir>/admin-token`, else generated into that file. Call once at start, after
/// the data dir exists.
pub fn resolve_admin_token(settings: &mut Settings) -> Result<AdminTokenSource, AdminTokenError> {
    if settings.server.admin_token.is_some() {
        return Ok(AdminTokenSource::Config);
    }
    let (token, source) = load_or_create_token(&settings.store.data_dir)?;
    settings.server.admin_token = Some(token);
    Ok(source)
}

/// Reads the token file in `data_dir`, or creates it with a fresh random token.
pub fn load_or_create_token(
    data_dir: &Path,
) -> Result<(SecretString, AdminTokenSource), AdminTokenError> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let io = |source| AdminTokenError::Io {
        path: path.clone(),
        source,
    };
    if let Some(token) = read_token(&path)? {
        return Ok((token, AdminTokenSource::File(path)));
    }
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
    // Written to a temp file (created 0600 by tempfile) and fsynced, then linked into
    // place without replacing: a crash never leaves a half-written token file, and if
    // another process won the race, its token is the one both use.
    let mut file = tempfile::NamedTempFile::new_in(data_dir).map_err(io)?;
    file.write_all(token.as_bytes()).map_err(io)?;
    file.write_all(b"\n").map_err(io)?;
    file.as_file().sync_all().map_err(io)?;
    match file.persist_noclobber(&path) {
        Ok(_) => {
            sync_dir(data_dir);
            Ok((SecretString::from(token), AdminTokenSource::Generated(path)))
        }
        Err(error) if error.error.kind() == std::io::ErrorKind::AlreadyExists => {
            match read_token(&path)? {
                Some(token) => Ok((token, AdminTokenSource::File(path))),
                None => Err(AdminTokenError::Invalid(path)),
            }
        }
        Err(error) => Err(io(error.error)),
    }
}

fn read_token(path: &Path) -> Result<Option<SecretString>, AdminTokenError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text =
                String::from_utf8(bytes).map_err(|_| AdminTokenError::Invalid(path.into()))?;
            let token = text.trim();
            if token.is_empty() {
                return Err(AdminTokenError::Invalid(path.into()));
            }
            warn_if_readable_by_others(path);
            Ok(Some(SecretString::from(token.to_owned())))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AdminTokenError::Io {
            path: path.into(),
            source,
        }),
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "admin token file is readable by other users; chmod 600 it");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// Makes the new directory entry durable; best effort (a lost entry only means a new
/// token is generated at the next start).
fn sync_dir(dir: &Path) {
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_paths_are_exactly_the_documented_ones() {
        for path in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/dashboard",
            "/dashboard/dashboard.css",
            "/dashboard/dashboard.js",
            "/webhooks/plaid",
        ] {
            assert!(is_public(path), "{path} should be public");
        }
        for path in [
            "/",
            "/openapi.json",
            "/v1/accounts",
            "/debug/actors",
            "/healthz/",
            "/dashboardx",
            "/dashboard/",
            "/dashboard/app.js",
            "/dashboard/data.json",
            "/dashboard/dashboard.js/x",
            "/webhooks",
            "/webhooks/",
            "/webhooks/plaid/extra",
            "/metricsx",
        ] {
            assert!(!is_public(path), "{path} should need the token");
        }
    }

    #[test]
    fn bearer_token_is_compared_whole() {
        let auth = AdminAuth::new(&SecretString::from("s3cret-token".to_owned()));
        assert!(auth.accepts(Some(b"Bearer s3cret-token")));
        assert!(auth.accepts(Some(b"bearer s3cret-token")));
        assert!(!auth.accepts(None));
        assert!(!auth.accepts(Some(b"Bearer s3cret-toke")));
        assert!(!auth.accepts(Some(b"Bearer s3cret-token2")));
        assert!(!auth.accepts(Some(b"Basic s3cret-token")));
        assert!(!auth.accepts(Some(b"s3cret-token")));
        assert!(!auth.accepts(Some(b"Bearer ")));
        let unconfigured = AdminAuth { digest: None };
        assert!(!unconfigured.accepts(Some(b"Bearer s3cret-token")));
        assert!(!format!("{auth:?}").contains("s3cret"));
    }

    #[test]
    fn generated_token_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (first, source) = load_or_create_token(dir.path()).unwrap();
        let path = dir.path().join(ADMIN_TOKEN_FILE);
        assert_eq!(source, AdminTokenSource::Generated(path.clone()));
        assert!(first.expose_secret().starts_with(TOKEN_PREFIX));
        assert_eq!(first.expose_secret().len(), TOKEN_PREFIX.len() + 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let (second, source) = load_or_create_token(dir.path()).unwrap();
        assert_eq!(source, AdminTokenSource::File(path));
        assert_eq!(first.expose_secret(), second.expose_secret());

        let other = tempfile::tempdir().unwrap();
        let (third, _) = load_or_create_token(other.path()).unwrap();
        assert_ne!(first.expose_secret(), third.expose_secret());
    }

    #[test]
    fn configured_token_wins_and_empty_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::defaults();
        settings.store.data_dir = dir.path().to_path_buf();
        settings.server.admin_token = Some(SecretString::from("configured-token-123".to_owned()));
        assert_eq!(
            resolve_admin_token(&mut settings).unwrap(),
            AdminTokenSource::Config
        );
        assert!(!dir.path().join(ADMIN_TOKEN_FILE).exists());

        std::fs::write(dir.path().join(ADMIN_TOKEN_FILE), "  \n").unwrap();
        settings.server.admin_token = None;
        assert!(matches!(
            resolve_admin_token(&mut settings),
            Err(AdminTokenError::Invalid(_))
        ));
    }
}
