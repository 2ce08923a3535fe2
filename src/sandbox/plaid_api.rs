//! Plaid's endpoints, served with Plaid's wire types, credentials rules, error objects
//! and HTTP statuses, so that a Plaid client (acctor's or Plaid's own libraries) works
//! against the sandbox by changing only its base URL.
//!
//! Handlers only translate: parse and authenticate the request, ask the bank, shape
//! the answer. Bodies are parsed by hand (not with axum's `Json`) because Plaid answers
//! malformed bodies, missing fields and bad credentials with its own error object.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::NaiveDate;
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::de::DeserializeOwned;
use tracing::debug;

use super::faults::{self, Endpoint, ErrorKind};
use super::plaid_bank::{Item, PendingLink, SyncError};
use super::{generate, sync_flags, Sandbox, DEFAULT_HISTORY};
use crate::providers::plaid::wire::{
    self, AccessTokenRequest, ItemGetResponse, ItemPublicTokenExchangeRequest,
    ItemPublicTokenExchangeResponse, PlaidError, PlaidItem, RequestIdResponse,
    SandboxItemFireWebhookRequest, SandboxItemFireWebhookResponse, SandboxItemResetLoginResponse,
    SandboxPublicTokenCreateRequest, SandboxPublicTokenCreateResponse,
    SandboxTransactionsCreateRequest, TransactionsGetRequest, TransactionsGetResponse,
    TransactionsSyncRequest, TransactionsSyncResponse, WebhookVerificationKeyGetRequest,
    WebhookVerificationKeyGetResponse,
};

/// Page size bounds of `/transactions/sync` and `/transactions/get`.
const MIN_COUNT: u32 = 1;
const MAX_COUNT: u32 = 500;
const DEFAULT_COUNT: u32 = 100;

/// Plaid's routes.
pub(super) fn routes() -> Router<Sandbox> {
    Router::new()
        .route("/transactions/sync", post(transactions_sync))
        .route("/transactions/get", post(transactions_get))
        .route("/item/get", post(item_get))
        .route(
            "/webhook_verification_key/get",
            post(webhook_verification_key_get),
        )
        .route(
            "/sandbox/public_token/create",
            post(sandbox_public_token_create),
        )
        .route(
            "/item/public_token/exchange",
            post(item_public_token_exchange),
        )
        .route(
            "/sandbox/item/fire_webhook",
            post(sandbox_item_fire_webhook),
        )
        .route(
            "/sandbox/transactions/create",
            post(sandbox_transactions_create),
        )
        .route("/sandbox/item/reset_login", post(sandbox_item_reset_login))
}

/// A fresh Plaid-style request id (15 alphanumerics).
pub(super) fn request_id() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(15)
        .map(char::from)
        .collect()
}

/// A Plaid error answer: category, code and message; the status follows the category.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error_type} {error_code}: {message}")]
pub(crate) struct PlaidApiError {
    error_type: &'static str,
    error_code: &'static str,
    message: String,
    display_message: Option<&'static str>,
}

impl PlaidApiError {
    fn new(error_type: &'static str, error_code: &'static str, message: impl Into<String>) -> Self {
        PlaidApiError {
            error_type,
            error_code,
            message: message.into(),
            display_message: None,
        }
    }

    fn invalid_body() -> Self {
        Self::new(
            "INVALID_REQUEST",
            wire::INVALID_BODY,
            "body could not be parsed as JSON",
        )
    }

    fn missing_fields(fields: &[&str]) -> Self {
        Self::new(
            "INVALID_REQUEST",
            wire::MISSING_FIELDS,
            format!(
                "the following required fields are missing: {}",
                fields.join(", ")
            ),
        )
    }

    fn invalid_field(message: impl Into<String>) -> Self {
        Self::new("INVALID_REQUEST", wire::INVALID_FIELD, message)
    }

    fn invalid_api_keys() -> Self {
        Self::new(
            "INVALID_INPUT",
            wire::INVALID_API_KEYS,
            "invalid client_id or secret provided",
        )
    }

    fn invalid_access_token() -> Self {
        Self::new(
            "INVALID_INPUT",
            wire::INVALID_ACCESS_TOKEN,
            "provided access token is in an invalid format or does not exist",
        )
    }

    fn login_required() -> Self {
        PlaidApiError {
            display_message: Some(
                "the login details of this item have changed (credentials, MFA, or required \
                 user action) and a user login is required to update this information",
            ),
            ..Self::new(
                "ITEM_ERROR",
                wire::ITEM_LOGIN_REQUIRED,
                "the login details of this item have changed (credentials, MFA, or required \
                 user action) and a user login is required to update this information. use \
                 Link's update mode to restore the item to a good state",
            )
        }
    }

    fn internal_server_error() -> Self {
        Self::new(
            "API_ERROR",
            "INTERNAL_SERVER_ERROR",
            "an unexpected error occurred",
        )
    }

    /// Plaid's per-endpoint rate limit answer.
    fn rate_limited(endpoint: Endpoint) -> Self {
        let (code, message) = match endpoint {
            Endpoint::TransactionsSync => (
                "TRANSACTIONS_SYNC_LIMIT",
                "rate limit exceeded for attempts to access /transactions/sync for this item. \
                 please try again later",
            ),
            Endpoint::TransactionsGet => (
                "TRANSACTIONS_LIMIT",
                "rate limit exceeded for attempts to access /transactions/get for this item. \
                 please try again later",
            ),
            Endpoint::ItemGet => (
                "ITEM_GET_LIMIT",
                "rate limit exceeded for attempts to access /item/get for this item. please \
                 try again later",
            ),
        };
        Self::new("RATE_LIMIT_EXCEEDED", code, message)
    }

    fn http_status(&self) -> StatusCode {
        match (self.error_type, self.error_code) {
            ("RATE_LIMIT_EXCEEDED", _) => StatusCode::TOO_MANY_REQUESTS,
            ("API_ERROR", _) => StatusCode::INTERNAL_SERVER_ERROR,
            (_, "NOT_FOUND") => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The wire object with `request_id`.
    fn to_wire(&self, request_id: String) -> PlaidError {
        let section = self
            .error_type
            .trim_end_matches("_ERROR")
            .to_ascii_lowercase()
            .replace('_', "-");
        PlaidError {
            error_type: self.error_type.to_string(),
            error_code: self.error_code.to_string(),
            error_message: self.message.clone(),
            display_message: self.display_message.map(str::to_string),
            request_id,
            causes: Vec::new(),
            status: Some(self.http_status().as_u16()),
            documentation_url: Some(format!(
                "https://plaid.com/docs/errors/{section}/#{}",
                self.error_code.to_ascii_lowercase()
            )),
            suggested_action: None,
        }
    }
}

impl From<SyncError> for PlaidApiError {
    fn from(e: SyncError) -> Self {
        match e {
            SyncError::LoginRequired => PlaidApiError::login_required(),
            SyncError::CursorRejected(message) => PlaidApiError::invalid_field(message),
            SyncError::MutationDuringPagination => PlaidApiError::new(
                "TRANSACTIONS_ERROR",
                wire::MUTATION_DURING_PAGINATION,
                "underlying transaction data changed since last page was fetched. please \
                 restart pagination from last update",
            ),
        }
    }
}

impl IntoResponse for PlaidApiError {
    fn into_response(self) -> Response {
        (self.http_status(), Json(self.to_wire(request_id()))).into_response()
    }
}

/// Answers unknown paths: Plaid's error object, or the admin shape under `/admin`.
pub(super) async fn not_found(uri: Uri) -> Response {
    if uri.path().starts_with("/admin") {
        return super::admin::AdminError::NotFound(format!("no route {}", uri.path()))
            .into_response();
    }
    PlaidApiError::new(
        "INVALID_REQUEST",
        "NOT_FOUND",
        format!("the requested path {} was not found", uri.path()),
    )
    .into_response()
}

/// Parses a Plaid request body and checks its credentials (body fields or the
/// `PLAID-CLIENT-ID` / `PLAID-SECRET` headers).
fn parse<T: DeserializeOwned>(
    sandbox: &Sandbox,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, PlaidApiError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| PlaidApiError::invalid_body())?;
    let Some(object) = value.as_object() else {
        return Err(PlaidApiError::invalid_body());
    };
    let credential = |header: &str, field: &str| -> Option<String> {
        headers
            .get(header)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| {
                object
                    .get(field)
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            })
    };
    let client_id = credential("PLAID-CLIENT-ID", "client_id");
    let secret = credential("PLAID-SECRET", "secret");
    let (client_id, secret) = match (client_id, secret) {
        (Some(c), Some(s)) => (c, s),
        (None, None) => return Err(PlaidApiError::missing_fields(&["client_id", "secret"])),
        (None, Some(_)) => return Err(PlaidApiError::missing_fields(&["client_id"])),
        (Some(_), None) => return Err(PlaidApiError::missing_fields(&["secret"])),
    };
    if !sandbox.credentials_match(&client_id, &secret) {
        return Err(PlaidApiError::invalid_api_keys());
    }
    serde_json::from_value(value).map_err(|e| {
        let text = e.to_string();
        match text
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            Some(field) => PlaidApiError::missing_fields(&[field]),
            None => PlaidApiError::invalid_field(text),
        }
    })
}

fn item_for(sandbox: &Sandbox, access_token: &str) -> Result<std::sync::Arc<Item>, PlaidApiError> {
    sandbox
        .bank()
        .item_by_token(access_token)
        .ok_or_else(PlaidApiError::invalid_access_token)
}

fn page_size(count: Option<u32>) -> Result<usize, PlaidApiError> {
    let count = count.unwrap_or(DEFAULT_COUNT);
    if !(MIN_COUNT..=MAX_COUNT).contains(&count) {
        return Err(PlaidApiError::invalid_field(format!(
            "count must be between {MIN_COUNT} and {MAX_COUNT}"
        )));
    }
    Ok(count as usize)
}

fn parse_date(field: &str, text: &str) -> Result<NaiveDate, PlaidApiError> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        PlaidApiError::invalid_field(format!("{field} must be a date in YYYY-MM-DD format"))
    })
}

fn plaid_item(sandbox: &Sandbox, item: &Item, request_id: &str) -> PlaidItem {
    PlaidItem {
        item_id: item.item_id.clone(),
        institution_id: Some(item.institution_id.clone()),
        webhook: sandbox.bank().webhook_url_for(item),
        error: item
            .login_required()
            .then(|| PlaidApiError::login_required().to_wire(request_id.to_string())),
        available_products: ["assets", "auth", "balance", "identity", "investments"]
            .map(str::to_string)
            .to_vec(),
        billed_products: vec!["transactions".to_string()],
        consent_expiration_time: None,
        update_type: "background".to_string(),
        institution_name: institution_name(&item.institution_id).map(str::to_string),
        products: vec!["transactions".to_string()],
        consented_products: vec!["transactions".to_string()],
        auth_method: None,
    }
}

/// Names of Plaid's Sandbox institutions, so that an item linked at one of them reads
/// as it would at Plaid.
fn institution_name(institution_id: &str) -> Option<&'static str> {
    match institution_id {
        "ins_109508" => Some("First Platypus Bank"),
        "ins_109509" => Some("First Gingham Credit Union"),
        "ins_109510" => Some("Tattersall Federal Credit Union"),
        "ins_109511" => Some("Tartan Bank"),
        "ins_109512" => Some("Houndstooth Bank"),
        _ => None,
    }
}

/// Applies the random faults of `item` to a call of `endpoint`: the added latency, then
/// maybe an injected error. A `timeout` holds the call for [`faults::TIMEOUT_HOLD`]
/// (an async sleep: other requests go on) and then answers 500, which no client with
/// a sane timeout ever reads. A `login` leaves the item in `login_required` and, like
/// `/sandbox/item/reset_login`, delivers `ITEM`/`ERROR` before answering.
async fn inject(sandbox: &Sandbox, item: &Item, endpoint: Endpoint) -> Result<(), PlaidApiError> {
    let faults = sandbox.bank().effective_faults(item);
    let latency = faults.latency(endpoint);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let Some(kind) = faults.draw_error(endpoint, &mut super::plaid_bank::lock(&item.fault_rng))
    else {
        return Ok(());
    };
    item.stats.count_injected(kind);
    debug!(item_id = %item.item_id, endpoint = ?endpoint, kind = ?kind, "fault injected");
    match kind {
        ErrorKind::Internal => Err(PlaidApiError::internal_server_error()),
        ErrorKind::RateLimit => Err(PlaidApiError::rate_limited(endpoint)),
        ErrorKind::Login => {
            // Plaid's login errors are sticky until the user repairs the login, and the
            // item's webhook hears of it: a one-off answer on a healthy item would park
            // acctor's account with nothing ever coming to repair it.
            if item.require_login() {
                sandbox
                    .fire(item, "ITEM", "ERROR", login_required_extra())
                    .await;
            }
            Err(PlaidApiError::login_required())
        }
        ErrorKind::Timeout => {
            tokio::time::sleep(faults::TIMEOUT_HOLD).await;
            Err(PlaidApiError::internal_server_error())
        }
    }
}

async fn transactions_sync(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<TransactionsSyncResponse>, PlaidApiError> {
    let request: TransactionsSyncRequest = parse(&sandbox, &headers, &body)?;
    let item = item_for(&sandbox, &request.access_token)?;
    // The in-flight window spans the whole call, injected latency included, so two
    // calls that overlap at all are seen as overlapping.
    let _in_flight = item.enter_sync();
    if !item.admit_sync() {
        return Err(PlaidApiError::rate_limited(Endpoint::TransactionsSync));
    }
    let latency = item.sync_latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    inject(&sandbox, &item, Endpoint::TransactionsSync).await?;
    let count = page_size(request.count)?;
    let mut page = item.sync_page(sandbox.bank().codec(), request.cursor.as_deref(), count)?;
    let latency_after = item.sync_latency_after();
    if !latency_after.is_zero() {
        tokio::time::sleep(latency_after).await;
    }
    page.added
        .iter_mut()
        .chain(page.modified.iter_mut())
        .for_each(generate::enrich);
    Ok(Json(TransactionsSyncResponse {
        accounts: page.accounts,
        added: page.added,
        modified: page.modified,
        removed: page.removed,
        next_cursor: page.next_cursor,
        has_more: page.has_more,
        transactions_update_status: "HISTORICAL_UPDATE_COMPLETE".to_string(),
        request_id: request_id(),
    }))
}

async fn transactions_get(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<TransactionsGetResponse>, PlaidApiError> {
    let request: TransactionsGetRequest = parse(&sandbox, &headers, &body)?;
    let item = item_for(&sandbox, &request.access_token)?;
    item.stats.count_get();
    inject(&sandbox, &item, Endpoint::TransactionsGet).await?;
    let start = parse_date("start_date", &request.start_date)?;
    let end = parse_date("end_date", &request.end_date)?;
    if start > end {
        return Err(PlaidApiError::invalid_field(
            "start_date must be on or before end_date",
        ));
    }
    let options = request.options.unwrap_or_default();
    let count = page_size(options.count)?;
    let mut page = item.window(
        start,
        end,
        options.offset.unwrap_or(0),
        count,
        options.account_ids.as_deref(),
    )?;
    page.transactions.iter_mut().for_each(generate::enrich);
    let request_id = request_id();
    Ok(Json(TransactionsGetResponse {
        accounts: page.accounts,
        transactions: page.transactions,
        total_transactions: page.total,
        item: plaid_item(&sandbox, &item, &request_id),
        request_id,
    }))
}

async fn item_get(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ItemGetResponse>, PlaidApiError> {
    let request: AccessTokenRequest = parse(&sandbox, &headers, &body)?;
    let item = item_for(&sandbox, &request.access_token)?;
    inject(&sandbox, &item, Endpoint::ItemGet).await?;
    let request_id = request_id();
    Ok(Json(ItemGetResponse {
        item: plaid_item(&sandbox, &item, &request_id),
        status: None,
        request_id,
    }))
}

async fn webhook_verification_key_get(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<WebhookVerificationKeyGetResponse>, PlaidApiError> {
    let request: WebhookVerificationKeyGetRequest = parse(&sandbox, &headers, &body)?;
    let jwk = sandbox.inner.webhooks.signer().jwk();
    if request.key_id != jwk.kid {
        return Err(PlaidApiError::new(
            "INVALID_INPUT",
            "INVALID_WEBHOOK_VERIFICATION_KEY_ID",
            "invalid key_id provided",
        ));
    }
    Ok(Json(WebhookVerificationKeyGetResponse {
        key: jwk.clone(),
        request_id: request_id(),
    }))
}

async fn sandbox_public_token_create(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<SandboxPublicTokenCreateResponse>, PlaidApiError> {
    let request: SandboxPublicTokenCreateRequest = parse(&sandbox, &headers, &body)?;
    if request.institution_id.is_empty() {
        return Err(PlaidApiError::invalid_field(
            "institution_id must not be empty",
        ));
    }
    if request.initial_products.is_empty() {
        return Err(PlaidApiError::invalid_field(
            "initial_products must not be empty",
        ));
    }
    let public_token = sandbox.bank().create_public_token(PendingLink {
        institution_id: request.institution_id,
        webhook: request.options.and_then(|o| o.webhook),
    });
    Ok(Json(SandboxPublicTokenCreateResponse {
        public_token,
        request_id: request_id(),
    }))
}

async fn item_public_token_exchange(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ItemPublicTokenExchangeResponse>, PlaidApiError> {
    let request: ItemPublicTokenExchangeRequest = parse(&sandbox, &headers, &body)?;
    let Some(link) = sandbox.bank().take_public_token(&request.public_token) else {
        return Err(PlaidApiError::new(
            "INVALID_INPUT",
            wire::INVALID_PUBLIC_TOKEN,
            "provided public token is invalid, expired or already exchanged",
        ));
    };
    let item = sandbox
        .bank()
        .create_item(DEFAULT_HISTORY, link.webhook, &link.institution_id);
    Ok(Json(ItemPublicTokenExchangeResponse {
        access_token: item.access_token.clone(),
        item_id: item.item_id.clone(),
        request_id: request_id(),
    }))
}

/// The webhook type of a code Plaid's `/sandbox/item/fire_webhook` accepts.
fn webhook_type_of(code: &str) -> Option<&'static str> {
    match code {
        "SYNC_UPDATES_AVAILABLE"
        | "DEFAULT_UPDATE"
        | "INITIAL_UPDATE"
        | "HISTORICAL_UPDATE"
        | "TRANSACTIONS_REMOVED"
        | "RECURRING_TRANSACTIONS_UPDATE" => Some("TRANSACTIONS"),
        "NEW_ACCOUNTS_AVAILABLE"
        | "LOGIN_REPAIRED"
        | "PENDING_EXPIRATION"
        | "PENDING_DISCONNECT"
        | "ERROR"
        | "USER_PERMISSION_REVOKED"
        | "WEBHOOK_UPDATE_ACKNOWLEDGED" => Some("ITEM"),
        _ => None,
    }
}

/// The extra body fields Plaid sends with `code`.
pub(super) fn webhook_extra(code: &str) -> serde_json::Map<String, serde_json::Value> {
    match code {
        "SYNC_UPDATES_AVAILABLE" => sync_flags(),
        "DEFAULT_UPDATE" | "INITIAL_UPDATE" | "HISTORICAL_UPDATE" => {
            let mut extra = serde_json::Map::new();
            extra.insert("new_transactions".into(), 0.into());
            extra
        }
        "ERROR" => login_required_extra(),
        // Plaid announces both seven days ahead of the end of access.
        "PENDING_EXPIRATION" => {
            let mut extra = serde_json::Map::new();
            let expires = chrono::Utc::now() + chrono::Duration::days(PENDING_NOTICE_DAYS);
            extra.insert(
                "consent_expiration_time".into(),
                expires
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    .into(),
            );
            extra
        }
        "PENDING_DISCONNECT" => {
            let mut extra = serde_json::Map::new();
            extra.insert("reason".into(), "INSTITUTION_TOKEN_EXPIRATION".into());
            extra
        }
        _ => serde_json::Map::new(),
    }
}

/// How far ahead Plaid announces an expiring consent or a disconnection.
const PENDING_NOTICE_DAYS: i64 = 7;

fn login_required_extra() -> serde_json::Map<String, serde_json::Value> {
    let mut extra = serde_json::Map::new();
    extra.insert(
        "error".into(),
        serde_json::to_value(PlaidApiError::login_required().to_wire(request_id()))
            .unwrap_or_default(),
    );
    extra
}

/// Fires `code` for `item` with Plaid's body for it. `None`: no such code.
pub(super) async fn fire_code(sandbox: &Sandbox, item: &Item, code: &str) -> Option<Option<u16>> {
    let webhook_type = webhook_type_of(code)?;
    Some(
        sandbox
            .fire(item, webhook_type, code, webhook_extra(code))
            .await,
    )
}

async fn sandbox_item_fire_webhook(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<SandboxItemFireWebhookResponse>, PlaidApiError> {
    let request: SandboxItemFireWebhookRequest = parse(&sandbox, &headers, &body)?;
    let item = item_for(&sandbox, &request.access_token)?;
    let code = request.webhook_code.as_str();
    let Some(webhook_type) = webhook_type_of(code) else {
        return Err(PlaidApiError::invalid_field(format!(
            "webhook_code {code} is not supported"
        )));
    };
    if let Some(requested) = request.webhook_type.as_deref() {
        if requested != webhook_type {
            return Err(PlaidApiError::invalid_field(format!(
                "webhook_type {requested} does not match webhook_code {code}"
            )));
        }
    }
    // Plaid's Sandbox flow for a repaired login: the item works again and says so.
    if code == "LOGIN_REPAIRED" {
        item.set_login_required(false);
    }
    let fired = sandbox.bank().webhook_url_for(&item).is_some();
    if fired {
        sandbox
            .fire(&item, webhook_type, code, webhook_extra(code))
            .await;
    }
    Ok(Json(SandboxItemFireWebhookResponse {
        webhook_fired: fired,
        request_id: request_id(),
    }))
}

async fn sandbox_transactions_create(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RequestIdResponse>, PlaidApiError> {
    let request: SandboxTransactionsCreateRequest = parse(&sandbox, &headers, &body)?;
    let item = item_for(&sandbox, &request.access_token)?;
    if request.transactions.is_empty() {
        return Err(PlaidApiError::invalid_field(
            "transactions must not be empty",
        ));
    }
    let mut inputs = Vec::with_capacity(request.transactions.len());
    for input in &request.transactions {
        if !input.amount.is_finite() {
            return Err(PlaidApiError::invalid_field("amount must be a number"));
        }
        inputs.push((
            input,
            parse_date("date_posted", &input.date_posted)?,
            parse_date("date_transacted", &input.date_transacted)?,
        ));
    }
    item.add_with(inputs.len(), |rng, account_id, i| {
        let (input, posted, transacted) = inputs[i];
        generate::from_input(
            rng,
            account_id,
            input.amount,
            posted,
            transacted,
            &input.description,
            input.iso_currency_code.as_deref(),
        )
    });
    sandbox.fire_sync_updates(&item).await;
    Ok(Json(RequestIdResponse {
        request_id: request_id(),
    }))
}

async fn sandbox_item_reset_login(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<SandboxItemResetLoginResponse>, PlaidApiError> {
    let request: AccessTokenRequest = parse(&sandbox, &headers, &body)?;
    let item = item_for(&sandbox, &request.access_token)?;
    item.set_login_required(true);
    // Plaid tells the item's webhook: ITEM / ERROR carrying ITEM_LOGIN_REQUIRED.
    sandbox
        .fire(&item, "ITEM", "ERROR", login_required_extra())
        .await;
    Ok(Json(SandboxItemResetLoginResponse {
        reset_login: true,
        request_id: request_id(),
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};
    use tokio::net::TcpListener;

    use crate::sandbox::{Sandbox, SandboxConfig};

    /// Optional in Plaid's schema but present in every answer of Plaid's: Plaid's
    /// generated clients raise on reading an absent attribute (see
    /// scripts/plaid_official_client_check.py).
    const TRANSACTION_KEYS: &[&str] = &[
        "account_owner",
        "authorized_date",
        "authorized_datetime",
        "category",
        "category_id",
        "check_number",
        "counterparties",
        "datetime",
        "location",
        "logo_url",
        "merchant_entity_id",
        "merchant_name",
        "payment_meta",
        "pending_transaction_id",
        "personal_finance_category",
        "transaction_code",
        "transaction_type",
        "website",
    ];
    const ITEM_KEYS: &[&str] = &[
        "institution_id",
        "institution_name",
        "products",
        "consented_products",
        "auth_method",
    ];

    async fn plaid(base: &str, path: &str, mut body: Value) -> Value {
        body["client_id"] = "c".into();
        body["secret"] = "s".into();
        let response = reqwest::Client::new()
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.unwrap()
    }

    fn assert_plaid_shaped(txn: &Value) {
        for key in TRANSACTION_KEYS {
            assert!(txn.get(key).is_some(), "transaction without {key}: {txn}");
        }
        // Not nullable in Plaid's schema: absent is fine, null breaks the clients.
        for key in ["personal_finance_category_icon_url", "transaction_type"] {
            assert_ne!(txn.get(key), Some(&Value::Null), "{key} null: {txn}");
        }
    }

    #[tokio::test]
    async fn served_transactions_and_items_carry_every_field_plaid_always_sends() {
        let sandbox = Sandbox::new(SandboxConfig {
            client_id: "c".into(),
            secret: "s".into(),
            default_webhook_url: None,
            seed: 7,
            data_dir: None,
        })
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let handle = sandbox.clone().serve(listener).await;
        let base = handle.base_url();

        let created = plaid(
            &base,
            "/sandbox/public_token/create",
            json!({"institution_id": "ins_109508", "initial_products": ["transactions"]}),
        )
        .await;
        let exchanged = plaid(
            &base,
            "/item/public_token/exchange",
            json!({"public_token": created["public_token"]}),
        )
        .await;
        let token = exchanged["access_token"].clone();

        let page = plaid(
            &base,
            "/transactions/sync",
            json!({"access_token": token, "count": 500}),
        )
        .await;
        let added = page["added"].as_array().unwrap();
        assert!(!added.is_empty());
        added.iter().for_each(assert_plaid_shaped);
        // Named merchants come back enriched, the same way on every call.
        let starbucks: Vec<&Value> = added
            .iter()
            .filter(|t| t["merchant_name"] == "Starbucks")
            .collect();
        assert!(!starbucks.is_empty());
        for t in &starbucks {
            assert_eq!(t["website"], "starbucks.com");
            assert_eq!(t["transaction_type"], "place");
            assert_eq!(t["counterparties"][0]["type"], "merchant");
            assert_eq!(t["merchant_entity_id"], starbucks[0]["merchant_entity_id"]);
            assert_eq!(
                t["personal_finance_category"]["confidence_level"],
                "VERY_HIGH"
            );
        }

        let window = plaid(
            &base,
            "/transactions/get",
            json!({"access_token": token, "start_date": "2000-01-01",
                   "end_date": "2100-01-01", "options": {"count": 500}}),
        )
        .await;
        window["transactions"]
            .as_array()
            .unwrap()
            .iter()
            .for_each(assert_plaid_shaped);

        let item = plaid(&base, "/item/get", json!({"access_token": token})).await;
        assert!(item.get("status").is_some(), "{item}");
        for key in ITEM_KEYS {
            assert!(item["item"].get(key).is_some(), "item without {key}");
        }
        assert_eq!(item["item"]["institution_name"], "First Platypus Bank");
        assert_eq!(item["item"]["products"], json!(["transactions"]));
        handle.shutdown().await.unwrap();
    }
}
