//! Account openings: create one (anchor first, durable, then the operation's actor makes
//! the bank call), read and list them, and the ops commands (cancel, retry), plus the
//! sandbox's simulated status webhook.
//!
//! Creating writes the persisted anchor (state `in_progress`, no IBAN or BIC, its
//! request id and card step id generated) and waits until it is on disk before anything
//! else: the bank call is made by the operation's actor afterwards, with the request id
//! as its idempotency key. A crash between the two leaves an anchor whose wake-up entry
//! is due at once, so the sweeper (or the restart's recovery) drives it and the call is
//! repeated with the same key: the bank answers with the same tracking id.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::flags::opening_path;
use super::{Context, ServiceError};
use crate::domain::operations::{
    BankStatus, OpeningDetails, Operation, OperationId, OperationQuery, Segment,
};
use crate::store::CreateOutcome;
use crate::sync::bank::{OpsCommand, OpsCommandError};

/// Longest accepted text field of a create.
const MAX_FIELD: usize = 200;

/// A create request, as validated by the HTTP layer's types.
#[derive(Clone, Debug)]
pub struct CreateOpening {
    /// The customer in the caller's system.
    pub customer_id: String,
    /// ISO 3166-1 alpha-2 market.
    pub market: String,
    /// Company or freelancer.
    pub segment: Segment,
    /// Legal name of the account holder.
    pub legal_name: String,
    /// Contact email.
    pub email: Option<String>,
    /// Registration number.
    pub registration_number: Option<String>,
    /// Create even if the customer has an opening in progress.
    pub force: bool,
    /// The caller's idempotency key: a create repeated with the same key (a retry after
    /// a lost answer) returns the operation the first one created, whatever happened to
    /// it since, instead of opening a second account.
    pub idempotency_key: Option<String>,
}

/// What a create did.
#[derive(Clone, Debug)]
pub enum Created {
    /// A new operation (its actor is making the bank call).
    New(Operation),
    /// The customer's opening already in progress; nothing was created.
    Existing(Operation),
    /// The operation an earlier create with the same idempotency key made.
    Replayed(Operation),
    /// The idempotency key was used for another opening (another customer or other
    /// details): that one; nothing was created.
    KeyReused(Operation),
}

/// The request id of a create with the caller's idempotency `key`: derived from it, so
/// a retry finds the first create's operation (and the bank call repeats the same key).
fn request_id_for(key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("acctor-create\0{key}").as_bytes());
    format!("req_{}", &hex::encode(digest)[..32])
}

/// The operation an earlier create with `request_id` made, as this create's answer:
/// `Replayed` for the same details, `KeyReused` for others (the caller's mistake).
async fn replayed(
    ctx: &Context,
    request_id: &str,
    details: &OpeningDetails,
) -> Result<Option<Created>, ServiceError> {
    let key = request_id.to_string();
    let found = ctx
        .store
        .run(move |s| match s.find_operation(&key)? {
            Some(id) => s.get_operation(&id),
            None => Ok(None),
        })
        .await?;
    Ok(found.map(|op| {
        let same = op.details.customer_id == details.customer_id
            && op.details.market == details.market
            && op.details.segment == details.segment
            && op.details.legal_name == details.legal_name;
        if same {
            Created::Replayed(op)
        } else {
            Created::KeyReused(op)
        }
    }))
}

fn check_text(field: &str, value: &str) -> Result<(), ServiceError> {
    super::check_text(field, value, MAX_FIELD)
}

/// Checks a market against `operations.markets`.
pub(crate) fn check_market(ctx: &Context, market: &str) -> Result<(), ServiceError> {
    let markets = &ctx.settings.operations.markets;
    if markets.iter().any(|m| m == market) {
        return Ok(());
    }
    Err(ServiceError::invalid_field(format!(
        "market {market:?} is not served; accepted markets: {}",
        markets.join(", ")
    )))
}

/// Creates an account opening (see the module docs for the order of writes).
pub async fn create(ctx: &Context, input: CreateOpening) -> Result<Created, ServiceError> {
    check_text("customer_id", &input.customer_id)?;
    check_text("legal_name", &input.legal_name)?;
    check_market(ctx, &input.market)?;
    if let Some(email) = &input.email {
        check_text("email", email)?;
        if !email.contains('@') {
            return Err(ServiceError::invalid_field("email must contain @"));
        }
    }
    if let Some(number) = &input.registration_number {
        check_text("registration_number", number)?;
    }
    if let Some(key) = &input.idempotency_key {
        if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ServiceError::invalid_field(
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            ));
        }
    }
    let path = opening_path(ctx, &input.market, input.segment).await?;
    let now = ctx.clock.now();
    let escalate_after = chrono::Duration::from_std(ctx.settings.operations.escalate_after)
        .map_err(|e| ServiceError::Internal(format!("escalate_after out of range: {e}")))?;
    let mut operation = Operation::new(
        OpeningDetails {
            customer_id: input.customer_id,
            market: input.market,
            segment: input.segment,
            legal_name: input.legal_name,
            email: input.email,
            registration_number: input.registration_number,
        },
        path,
        now,
        escalate_after,
    );
    let keyed = input.idempotency_key.as_deref().map(request_id_for);
    if let Some(request_id) = &keyed {
        if let Some(answer) = replayed(ctx, request_id, &operation.details).await? {
            return Ok(answer);
        }
        operation.request_id = request_id.clone();
    }
    let details = operation.details.clone();
    let force = input.force;
    let outcome = match ctx
        .store
        .run(move |s| s.create_operation(&operation, force))
        .await
    {
        Ok(outcome) => outcome,
        // A concurrent create with the same key won the request id.
        Err(crate::store::StoreError::InvalidState(_)) if keyed.is_some() => {
            let request_id = keyed.as_deref().unwrap_or_default();
            return match replayed(ctx, request_id, &details).await? {
                Some(answer) => Ok(answer),
                None => Err(ServiceError::Internal(
                    "a keyed create lost its request id to no operation".to_string(),
                )),
            };
        }
        Err(error) => return Err(error.into()),
    };
    match outcome {
        CreateOutcome::Existing(existing) => Ok(Created::Existing(existing)),
        CreateOutcome::Created(created) => {
            // The anchor is on disk before the bank hears of it.
            ctx.store.durable().await?;
            if let Err(error) = ctx.operations.drive(&created.id) {
                // Its wake-up entry is due now: the sweeper drives it.
                tracing::warn!(operation_id = %created.id, %error, "could not start operation actor");
            }
            tracing::info!(operation_id = %created.id, market = %created.details.market, path = ?created.path, "account opening created");
            Ok(Created::New(created))
        }
    }
}

/// The operation a key names: its id, request id or tracking id.
pub async fn get(ctx: &Context, key: &str) -> Result<Operation, ServiceError> {
    let owned = key.to_string();
    let found = ctx
        .store
        .run(move |s| match s.find_operation(&owned)? {
            Some(id) => s.get_operation(&id),
            None => Ok(None),
        })
        .await?;
    found.ok_or_else(|| ServiceError::NotFound(format!("operation {key} not found")))
}

/// A page of operations, newest first.
pub async fn list(ctx: &Context, query: OperationQuery) -> Result<Vec<Operation>, ServiceError> {
    if let Some(market) = &query.market {
        check_market(ctx, market)?;
    }
    Ok(ctx.store.run(move |s| s.list_operations(&query)).await?)
}

/// Runs an ops command (cancel, retry) through the operation's actor.
pub async fn command(
    ctx: &Context,
    key: &str,
    command: OpsCommand,
) -> Result<Operation, ServiceError> {
    let id = get(ctx, key).await?.id;
    let result = ctx
        .operations
        .command(&id, command)
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
    result.map_err(|error| match error {
        OpsCommandError::NotFound(id) => {
            ServiceError::NotFound(format!("operation {id} not found"))
        }
        OpsCommandError::Conflict(message) => ServiceError::conflict("operation_final", message),
        OpsCommandError::Store(error) => ServiceError::Store(error),
    })
}

/// A simulated status to publish as a bank webhook.
#[derive(Clone, Debug)]
pub struct SimulatedStatus {
    /// The status.
    pub status: BankStatus,
    /// IBAN (required with `COMPLETED`).
    pub iban: Option<String>,
    /// BIC (required with `COMPLETED`).
    pub bic: Option<String>,
    /// Reason (with `REJECTED`).
    pub reason: Option<String>,
}

/// The body and signature header of a simulated bank webhook about `operation`.
fn simulated_webhook(
    ctx: &Context,
    operation: &Operation,
    status: &SimulatedStatus,
    now: DateTime<Utc>,
) -> Result<(Vec<u8>, String), ServiceError> {
    let body = json!({
        "event_id": format!("evt_sim_{}", uuid::Uuid::new_v4().simple()),
        "tracking_id": operation.tracking_id.clone().unwrap_or_default(),
        "request_id": operation.request_id,
        "status": status.status,
        "iban": status.iban,
        "bic": status.bic,
        "reason": status.reason,
        "occurred_at": now,
        "simulated": true,
    });
    let bytes = serde_json::to_vec(&body)
        .map_err(|e| ServiceError::Internal(format!("encoding a simulated webhook: {e}")))?;
    let secrets: Vec<&[u8]> = ctx
        .settings
        .bank
        .webhook_secrets
        .iter()
        .take(1)
        .map(|s| secrecy::ExposeSecret::expose_secret(s).as_bytes())
        .collect();
    let header = crate::providers::bank::sign(&secrets, now.timestamp(), &bytes);
    Ok((bytes, header))
}

/// Publishes a simulated bank webhook for operation `key`, through the real pipeline
/// (signature, dedup, inbox, actor): what a bank would have sent.
pub async fn simulate_status(
    ctx: &Context,
    ingest: &super::ingest::Ingest,
    key: &str,
    status: SimulatedStatus,
) -> Result<(Operation, super::ingest::Outcome), ServiceError> {
    if status.status == BankStatus::Completed && (status.iban.is_none() || status.bic.is_none()) {
        return Err(ServiceError::invalid_field(
            "a COMPLETED status needs iban and bic",
        ));
    }
    for (field, value) in [
        ("iban", &status.iban),
        ("bic", &status.bic),
        ("reason", &status.reason),
    ] {
        if let Some(value) = value {
            check_text(field, value)?;
        }
    }
    let operation = get(ctx, key).await?;
    let now = ctx.clock.now();
    let (body, signature) = simulated_webhook(ctx, &operation, &status, now)?;
    let mut headers = http::HeaderMap::new();
    let value = http::HeaderValue::from_str(&signature)
        .map_err(|e| ServiceError::Internal(format!("signature header: {e}")))?;
    headers.insert(crate::providers::bank::SIGNATURE_HEADER, value);
    let outcome = ingest
        .receive_bank(&headers, &body)
        .await
        .map_err(|e| ServiceError::Internal(format!("simulated webhook refused: {e}")))?;
    Ok((operation, outcome))
}

/// The id of an operation, for callers holding a key.
pub fn parse_id(key: &str) -> Option<OperationId> {
    OperationId::looks_canonical(key).then(|| OperationId(key.to_string()))
}
