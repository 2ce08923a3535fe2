//! Plaid's wire format: the request and response bodies of the endpoints acctor calls
//! and the sandbox serves, field for field as Plaid documents them. Shared by the client
//! (`providers::plaid`) and the simulated bank (`sandbox`), so that the sandbox speaks
//! exactly what the client expects and the client would talk to Plaid itself.
//!
//! Credentials (`client_id`, `secret`) may come in the body or in the `PLAID-CLIENT-ID` /
//! `PLAID-SECRET` headers, hence `Option` everywhere.

use serde::{Deserialize, Serialize};

/// `error_code` when data changed while a `/transactions/sync` loop was paging.
pub const MUTATION_DURING_PAGINATION: &str = "TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION";
/// `error_code` for an invalid request field (a rejected cursor among them).
pub const INVALID_FIELD: &str = "INVALID_FIELD";
/// `error_code` when the user must log in again.
pub const ITEM_LOGIN_REQUIRED: &str = "ITEM_LOGIN_REQUIRED";
/// `error_code` for an unknown or malformed access token.
pub const INVALID_ACCESS_TOKEN: &str = "INVALID_ACCESS_TOKEN";
/// `error_code` for bad credentials.
pub const INVALID_API_KEYS: &str = "INVALID_API_KEYS";
/// `error_code` for an unknown public token.
pub const INVALID_PUBLIC_TOKEN: &str = "INVALID_PUBLIC_TOKEN";
/// `error_code` for a missing field.
pub const MISSING_FIELDS: &str = "MISSING_FIELDS";
/// `error_code` for an unparseable body.
pub const INVALID_BODY: &str = "INVALID_BODY";
/// `error_code` for an internal failure.
pub const INTERNAL_SERVER_ERROR: &str = "INTERNAL_SERVER_ERROR";
/// `error_code` for a per-item `/transactions/sync` rate limit.
pub const TRANSACTIONS_SYNC_LIMIT: &str = "TRANSACTIONS_SYNC_LIMIT";
/// `error_code` for a general rate limit.
pub const RATE_LIMIT_EXCEEDED: &str = "RATE_LIMIT_EXCEEDED";

/// Plaid's error object, returned with a 4xx/5xx status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlaidError {
    /// Broad category: `INVALID_REQUEST`, `INVALID_INPUT`, `ITEM_ERROR`,
    /// `TRANSACTIONS_ERROR`, `RATE_LIMIT_EXCEEDED`, `API_ERROR`, ...
    pub error_type: String,
    /// Specific code, e.g. `TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION`.
    pub error_code: String,
    /// Developer-facing message.
    pub error_message: String,
    /// User-facing message, when there is one.
    pub display_message: Option<String>,
    /// The request's id.
    pub request_id: String,
    /// Further causes (always present, usually empty).
    #[serde(default)]
    pub causes: Vec<serde_json::Value>,
    /// The HTTP status, repeated in the body.
    #[serde(default)]
    pub status: Option<u16>,
    /// Link to Plaid's documentation for the code.
    #[serde(default)]
    pub documentation_url: Option<String>,
    /// Suggested action, when there is one.
    #[serde(default)]
    pub suggested_action: Option<String>,
}

/// Credentials that may accompany any request body.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Credentials {
    /// Plaid `client_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Plaid `secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// `POST /transactions/sync` request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransactionsSyncRequest {
    /// Credentials.
    #[serde(flatten)]
    pub credentials: Credentials,
    /// The item's access token.
    pub access_token: String,
    /// Cursor from the previous call; empty or absent for the whole history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Updates per page: 1..=500, default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

/// A removed transaction in a sync response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemovedTransaction {
    /// Id of the removed transaction.
    pub transaction_id: String,
    /// Its account.
    #[serde(default)]
    pub account_id: Option<String>,
}

/// `POST /transactions/sync` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransactionsSyncResponse {
    /// The item's accounts.
    pub accounts: Vec<PlaidAccount>,
    /// Added since the cursor, ascending by modification time.
    pub added: Vec<PlaidTransaction>,
    /// Modified since the cursor, ascending by modification time.
    pub modified: Vec<PlaidTransaction>,
    /// Removed since the cursor.
    pub removed: Vec<RemovedTransaction>,
    /// Cursor for the next call.
    pub next_cursor: String,
    /// Whether more updates are available right now.
    pub has_more: bool,
    /// `NOT_READY`, `INITIAL_UPDATE_COMPLETE` or `HISTORICAL_UPDATE_COMPLETE`.
    pub transactions_update_status: String,
    /// The request's id.
    pub request_id: String,
}

/// Options of `POST /transactions/get`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TransactionsGetOptions {
    /// Rows per page: 1..=500, default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Rows to skip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Restrict to these accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_ids: Option<Vec<String>>,
}

/// `POST /transactions/get` request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransactionsGetRequest {
    /// Credentials.
    #[serde(flatten)]
    pub credentials: Credentials,
    /// The item's access token.
    pub access_token: String,
    /// Inclusive start date, `YYYY-MM-DD`.
    pub start_date: String,
    /// Inclusive end date, `YYYY-MM-DD`.
    pub end_date: String,
    /// Paging options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<TransactionsGetOptions>,
}

/// `POST /transactions/get` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransactionsGetResponse {
    /// The item's accounts.
    pub accounts: Vec<PlaidAccount>,
    /// The page of transactions, newest date first.
    pub transactions: Vec<PlaidTransaction>,
    /// Total transactions in the window.
    pub total_transactions: u64,
    /// The item.
    pub item: PlaidItem,
    /// The request's id.
    pub request_id: String,
}

/// A request that only carries an access token (`/item/get`,
/// `/sandbox/item/reset_login`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccessTokenRequest {
    /// Credentials.
    #[serde(flatten)]
    pub credentials: Credentials,
    /// The item's access token.
    pub access_token: String,
}

/// `POST /item/get` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemGetResponse {
    /// The item.
    pub item: PlaidItem,
    /// Per-product update status; `null` when Plaid has none to report (always from
    /// the sandbox). Kept untyped because acctor never reads it.
    #[serde(default)]
    pub status: Option<serde_json::Value>,
    /// The request's id.
    pub request_id: String,
}

/// A Plaid Item: one login at one institution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlaidItem {
    /// The item's id.
    pub item_id: String,
    /// The institution.
    pub institution_id: Option<String>,
    /// The webhook URL configured for it.
    pub webhook: Option<String>,
    /// The item's error state, if any.
    pub error: Option<PlaidError>,
    /// Products that may be added.
    pub available_products: Vec<String>,
    /// Products enabled.
    pub billed_products: Vec<String>,
    /// When consent expires, if it does.
    pub consent_expiration_time: Option<String>,
    /// `background` or `user_present_required`.
    pub update_type: String,
    /// The institution's name, when known. The fields from here on are optional in
    /// Plaid's schema but always present in its answers, and Plaid's generated client
    /// libraries raise on reading an absent attribute, so the sandbox serves them too.
    #[serde(default)]
    pub institution_name: Option<String>,
    /// Products the item was linked with.
    #[serde(default)]
    pub products: Vec<String>,
    /// Products the user consented to.
    #[serde(default)]
    pub consented_products: Vec<String>,
    /// How the item's account numbers were verified (`null` unless Auth was used).
    #[serde(default)]
    pub auth_method: Option<String>,
}

/// Balances of an account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlaidBalances {
    /// Available balance.
    pub available: Option<f64>,
    /// Current balance.
    pub current: Option<f64>,
    /// Credit limit.
    pub limit: Option<f64>,
    /// ISO currency.
    pub iso_currency_code: Option<String>,
    /// Non-ISO currency.
    pub unofficial_currency_code: Option<String>,
}

/// An account within an item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlaidAccount {
    /// The account's id.
    pub account_id: String,
    /// Balances.
    pub balances: PlaidBalances,
    /// Last digits of the account number.
    pub mask: Option<String>,
    /// Name.
    pub name: String,
    /// Official name.
    pub official_name: Option<String>,
    /// `depository`, `credit`, ...
    #[serde(rename = "type")]
    pub account_type: String,
    /// `checking`, `savings`, ...
    pub subtype: Option<String>,
}

/// Plaid's personal finance category.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PersonalFinanceCategory {
    /// Primary category, e.g. `FOOD_AND_DRINK`.
    pub primary: String,
    /// Detailed category, e.g. `FOOD_AND_DRINK_COFFEE`.
    pub detailed: String,
    /// `VERY_HIGH`, `HIGH`, `MEDIUM`, `LOW` or `UNKNOWN`.
    #[serde(default)]
    pub confidence_level: Option<String>,
}

/// A party to a transaction (merchant, marketplace, payment app, ...) as Plaid
/// extracts it from the description.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlaidCounterparty {
    /// Its name, e.g. `Starbucks`.
    pub name: String,
    /// `merchant`, `financial_institution`, `payment_app`, `marketplace`,
    /// `payment_terminal` or `income_source`.
    #[serde(rename = "type")]
    pub counterparty_type: String,
    /// Its website, when known.
    pub website: Option<String>,
    /// Its logo, when known.
    pub logo_url: Option<String>,
    /// Plaid's stable id of the entity, when known.
    #[serde(default)]
    pub entity_id: Option<String>,
    /// `VERY_HIGH`, `HIGH`, `MEDIUM`, `LOW` or `UNKNOWN`.
    #[serde(default)]
    pub confidence_level: Option<String>,
}

/// A transaction, as Plaid returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlaidTransaction {
    /// The transaction's id.
    pub transaction_id: String,
    /// Its account.
    pub account_id: String,
    /// Amount; positive is money out.
    pub amount: f64,
    /// ISO currency.
    pub iso_currency_code: Option<String>,
    /// Non-ISO currency.
    pub unofficial_currency_code: Option<String>,
    /// Posted date (or transacted date while pending), `YYYY-MM-DD`.
    pub date: String,
    /// Authorization date.
    pub authorized_date: Option<String>,
    /// Posted timestamp, when known.
    pub datetime: Option<String>,
    /// Description.
    pub name: String,
    /// Merchant, when known.
    pub merchant_name: Option<String>,
    /// `online`, `in store` or `other`.
    pub payment_channel: String,
    /// Whether it is still pending.
    pub pending: bool,
    /// For a posted transaction, the id of the pending one it replaced.
    pub pending_transaction_id: Option<String>,
    /// Legacy category hierarchy.
    pub category: Option<Vec<String>>,
    /// Legacy category id.
    pub category_id: Option<String>,
    /// Personal finance category.
    pub personal_finance_category: Option<PersonalFinanceCategory>,
    /// Transaction code (non-US institutions).
    pub transaction_code: Option<String>,
    /// Where it happened (all fields null when unknown). Required by Plaid's generated
    /// client libraries, hence always serialized.
    #[serde(default)]
    pub location: PlaidLocation,
    /// Payment processor details (all fields null when unknown). Required by Plaid's
    /// generated client libraries.
    #[serde(default)]
    pub payment_meta: PlaidPaymentMeta,
    /// The account owner, for accounts with several owners.
    #[serde(default)]
    pub account_owner: Option<String>,
    /// Authorization timestamp, when known.
    #[serde(default)]
    pub authorized_datetime: Option<String>,
    /// Check number, for checks. From here on the fields are optional in Plaid's
    /// schema but present in its answers (enrichment is on by default), and Plaid's
    /// generated client libraries raise on reading an absent attribute.
    #[serde(default)]
    pub check_number: Option<String>,
    /// Parties to the transaction (empty when none was recognised).
    #[serde(default)]
    pub counterparties: Vec<PlaidCounterparty>,
    /// The merchant's logo, when known.
    #[serde(default)]
    pub logo_url: Option<String>,
    /// The merchant's website, when known.
    #[serde(default)]
    pub website: Option<String>,
    /// Plaid's stable id of the merchant, when known.
    #[serde(default)]
    pub merchant_entity_id: Option<String>,
    /// Icon of the personal finance category. Not nullable in Plaid's schema: omitted
    /// when there is no category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub personal_finance_category_icon_url: Option<String>,
    /// Deprecated `digital`, `place`, `special` or `unresolved`; still sent by Plaid
    /// for API version 2020-09-14. Not nullable in Plaid's schema: omitted when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_type: Option<String>,
}

/// Location of a transaction.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PlaidLocation {
    /// Street address.
    pub address: Option<String>,
    /// City.
    pub city: Option<String>,
    /// Region or state.
    pub region: Option<String>,
    /// Postal code.
    pub postal_code: Option<String>,
    /// ISO country code.
    pub country: Option<String>,
    /// Latitude.
    pub lat: Option<f64>,
    /// Longitude.
    pub lon: Option<f64>,
    /// Merchant store number.
    pub store_number: Option<String>,
}

/// Payment processor details of a transaction.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PlaidPaymentMeta {
    /// Who ordered the payment.
    pub by_order_of: Option<String>,
    /// Payee.
    pub payee: Option<String>,
    /// Payer.
    pub payer: Option<String>,
    /// Payment method.
    pub payment_method: Option<String>,
    /// Payment processor.
    pub payment_processor: Option<String>,
    /// PPD id.
    pub ppd_id: Option<String>,
    /// Reason.
    pub reason: Option<String>,
    /// Reference number.
    pub reference_number: Option<String>,
}

/// `POST /webhook_verification_key/get` request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebhookVerificationKeyGetRequest {
    /// Credentials.
    #[serde(flatten)]
    pub credentials: Credentials,
    /// The `kid` from the JWT header.
    pub key_id: String,
}

/// A JSON Web Key (P-256) as Plaid serves it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlaidJwk {
    /// Always `ES256`.
    pub alg: String,
    /// Unix seconds it was created.
    pub created_at: i64,
    /// Always `P-256`.
    pub crv: String,
    /// Unix seconds it expired, `null` while current.
    pub expired_at: Option<i64>,
    /// Key id.
    pub kid: String,
    /// Always `EC`.
    pub kty: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub key_use: String,
    /// X coordinate, base64url without padding.
    pub x: String,
    /// Y coordinate, base64url without padding.
    pub y: String,
}

/// `POST /webhook_verification_key/get` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebhookVerificationKeyGetResponse {
    /// The key.
    pub key: PlaidJwk,
    /// The request's id.
    pub request_id: String,
}

/// Claims of the `Plaid-Verification` JWT.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerificationClaims {
    /// Issued-at, unix seconds.
    pub iat: i64,
    /// Hex SHA-256 of the exact webhook body.
    pub request_body_sha256: String,
}

/// The common part of every Plaid webhook body; the rest is kept verbatim.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebhookBody {
    /// E.g. `TRANSACTIONS`, `ITEM`.
    pub webhook_type: String,
    /// E.g. `SYNC_UPDATES_AVAILABLE`.
    pub webhook_code: String,
    /// The item concerned.
    pub item_id: String,
    /// Every other field.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

/// `POST /sandbox/public_token/create` options.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SandboxPublicTokenCreateOptions {
    /// Webhook URL for the new item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// Test username (ignored beyond echoing Plaid's behaviour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_username: Option<String>,
    /// Test password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_password: Option<String>,
}

/// `POST /sandbox/public_token/create` request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SandboxPublicTokenCreateRequest {
    /// Credentials.
    #[serde(flatten)]
    pub credentials: Credentials,
    /// Institution, e.g. `ins_109508`.
    pub institution_id: String,
    /// Products, e.g. `["transactions"]`.
    pub initial_products: Vec<String>,
    /// Options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<SandboxPublicTokenCreateOptions>,
}

/// `POST /sandbox/public_token/create` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SandboxPublicTokenCreateResponse {
    /// The public token, to exchange.
    pub public_token: String,
    /// The request's id.
    pub request_id: String,
}

/// `POST /item/public_token/exchange` request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemPublicTokenExchangeRequest {
    /// Credentials.
    #[serde(flatten)]
    pub credentials: Credentials,
    /// The public token.
    pub public_token: String,
}

/// `POST /item/public_token/exchange` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemPublicTokenExchangeResponse {
    /// The access token.
    pub access_token: String,
    /// The item's id.
    pub item_id: String,
    /// The request's id.
    pub request_id: String,
}

/// `POST /sandbox/item/fire_webhook` request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SandboxItemFireWebhookRequest {
    /// Credentials.
    #[serde(flatten)]
    pub credentials: Credentials,
    /// The item's access token.
    pub access_token: String,
    /// Webhook type; `TRANSACTIONS` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_type: Option<String>,
    /// Webhook code, e.g. `SYNC_UPDATES_AVAILABLE`.
    pub webhook_code: String,
}

/// `POST /sandbox/item/fire_webhook` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SandboxItemFireWebhookResponse {
    /// Whether the webhook was fired.
    pub webhook_fired: bool,
    /// The request's id.
    pub request_id: String,
}

/// A transaction to create in `POST /sandbox/transactions/create`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SandboxTransactionInput {
    /// Amount; positive is money out.
    pub amount: f64,
    /// Posted date, `YYYY-MM-DD`.
    pub date_posted: String,
    /// Transaction date, `YYYY-MM-DD`.
    pub date_transacted: String,
    /// Description.
    pub description: String,
    /// ISO currency; `USD` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iso_currency_code: Option<String>,
}

/// `POST /sandbox/transactions/create` request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SandboxTransactionsCreateRequest {
    /// Credentials.
    #[serde(flatten)]
    pub credentials: Credentials,
    /// The item's access token.
    pub access_token: String,
    /// Transactions to add.
    pub transactions: Vec<SandboxTransactionInput>,
}

/// A response that only carries a request id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestIdResponse {
    /// The request's id.
    pub request_id: String,
}

/// `POST /sandbox/item/reset_login` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SandboxItemResetLoginResponse {
    /// Whether the item was put into the login-required state.
    pub reset_login: bool,
    /// The request's id.
    pub request_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_and_items_without_the_enrichment_fields_still_parse() {
        // What Plaid sent before enrichment was on by default, and what the sandbox
        // stored before these fields existed: acctor must keep reading it.
        let txn: PlaidTransaction = serde_json::from_value(serde_json::json!({
            "transaction_id": "t", "account_id": "a", "amount": 1.5,
            "iso_currency_code": "USD", "unofficial_currency_code": null,
            "date": "2024-01-02", "authorized_date": null, "datetime": null,
            "name": "n", "merchant_name": null, "payment_channel": "other",
            "pending": false, "pending_transaction_id": null, "category": null,
            "category_id": null,
            "personal_finance_category": {"primary": "INCOME", "detailed": "INCOME_WAGES"},
            "transaction_code": null
        }))
        .unwrap();
        assert!(txn.counterparties.is_empty() && txn.transaction_type.is_none());
        assert_eq!(
            txn.personal_finance_category.unwrap().confidence_level,
            None
        );
        let item: PlaidItem = serde_json::from_value(serde_json::json!({
            "item_id": "i", "institution_id": null, "webhook": null, "error": null,
            "available_products": [], "billed_products": ["transactions"],
            "consent_expiration_time": null, "update_type": "background"
        }))
        .unwrap();
        assert!(item.products.is_empty() && item.institution_name.is_none());
    }

    #[test]
    fn non_nullable_enrichment_fields_are_omitted_rather_than_null() {
        let txn: PlaidTransaction = serde_json::from_value(serde_json::json!({
            "transaction_id": "t", "account_id": "a", "amount": 1.5,
            "iso_currency_code": "USD", "unofficial_currency_code": null,
            "date": "2024-01-02", "authorized_date": null, "datetime": null,
            "name": "n", "merchant_name": null, "payment_channel": "other",
            "pending": false, "pending_transaction_id": null, "category": null,
            "category_id": null, "personal_finance_category": null,
            "transaction_code": null
        }))
        .unwrap();
        let value = serde_json::to_value(&txn).unwrap();
        assert!(value.get("personal_finance_category_icon_url").is_none());
        assert!(value.get("transaction_type").is_none());
        // Nullable ones are always written, null or not.
        assert_eq!(value["merchant_entity_id"], serde_json::Value::Null);
        assert_eq!(value["counterparties"], serde_json::json!([]));
    }
}
