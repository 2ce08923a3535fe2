//! Account use-cases: link (or relink an item already linked), resolve any lookup key,
//! unlink (and purge), request a sync, resume, and the sync status report. The rules
//! live here: what a valid key is, when a link is a relink, the order an unlink runs in.

use chrono::{DateTime, Utc};

use super::stripe_link::{self, StripeLinkInput};
use super::{blocking, Context, ServiceError};
use crate::actors::registry::{RegistryError, RestartSnapshot};
use crate::actors::{ActorSnapshot, SyncReason};
use crate::domain::{
    AccessToken, Account, AccountId, GaveUpCause, LinkStatus, ProviderKind, Quarantine,
};
use crate::store::{Resolved, RetryRecord, StoreError, TransactionPage, TransactionQuery};
use crate::telemetry::record_account;

/// The longest lookup key (item id, owner id, alias, token) accepted.
pub const MAX_KEY_LEN: usize = 256;
/// The most aliases one account may have.
pub const MAX_ALIASES: usize = 16;

/// What linking an account needs.
#[derive(Clone, Debug)]
pub struct LinkInput {
    /// The provider's name (`plaid`).
    pub provider: String,
    /// The provider's item id.
    pub item_id: String,
    /// The provider access token (stored, never returned).
    pub access_token: String,
    /// The owning user's id in the caller's system.
    pub owner_id: String,
    /// Extra lookup keys, e.g. an email.
    pub aliases: Vec<String>,
    /// What a Stripe link brings besides (`None` for other providers).
    pub stripe: Option<StripeLinkInput>,
}

/// Whether a link created an account or relinked an existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linked {
    /// A new account.
    Created,
    /// The item was already linked to the same owner: its token was replaced.
    Relinked,
}

/// Checks one lookup key or token: not blank, not too long, no control characters.
pub fn check_key(field: &'static str, value: &str) -> Result<(), ServiceError> {
    if value.trim().is_empty() {
        return Err(ServiceError::invalid_field(format!(
            "{field} must not be empty"
        )));
    }
    if value.len() > MAX_KEY_LEN {
        return Err(ServiceError::invalid_field(format!(
            "{field} is longer than {MAX_KEY_LEN} bytes"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ServiceError::invalid_field(format!(
            "{field} contains control characters"
        )));
    }
    Ok(())
}

/// Validates the input; returns the provider and the aliases without repeats.
fn validate(ctx: &Context, input: &LinkInput) -> Result<(ProviderKind, Vec<String>), ServiceError> {
    let provider = ProviderKind::parse(&input.provider).ok_or_else(|| {
        ServiceError::invalid_field(format!(
            "provider {:?} is not supported (supported: plaid, stripe)",
            input.provider
        ))
    })?;
    let configured = match provider {
        ProviderKind::Stripe => ctx.actors.stripe().is_some(),
        _ => ctx.providers.contains_key(&provider),
    };
    if !configured {
        return Err(ServiceError::invalid_field(format!(
            "provider {provider} is not configured"
        )));
    }
    check_key("item_id", &input.item_id)?;
    check_key("access_token", &input.access_token)?;
    check_key("owner_id", &input.owner_id)?;
    if input.aliases.len() > MAX_ALIASES {
        return Err(ServiceError::invalid_field(format!(
            "at most {MAX_ALIASES} aliases"
        )));
    }
    let mut aliases = Vec::with_capacity(input.aliases.len());
    for alias in &input.aliases {
        check_key("aliases[]", alias)?;
        if AccountId::looks_canonical(alias) {
            return Err(ServiceError::invalid_field(format!(
                "alias {alias:?} has the shape of an account id"
            )));
        }
        if !aliases.contains(alias) {
            aliases.push(alias.clone());
        }
    }
    Ok((provider, aliases))
}

/// Links an account, or, when the item is already linked (the user went through the
/// provider's update flow, e.g. after a login-required error), relinks it: the new
/// access token replaces the old one, a needs-reauth park and a pending deadline are
/// lifted with their incidents, and the account syncs at once, catching up every
/// webhook kept meanwhile. Cursor, rows and aliases stay. A relink must name the same
/// owner (`conflict` otherwise). A new account's actor starts the initial sync.
pub async fn link(ctx: &Context, input: LinkInput) -> Result<(Account, Linked), ServiceError> {
    let (provider, aliases) = validate(ctx, &input)?;
    let stripe = match (provider, &input.stripe) {
        (ProviderKind::Stripe, stripe) => Some(stripe_link::validate(
            &input.item_id,
            &input.access_token,
            &stripe.clone().unwrap_or_default(),
        )?),
        (_, None) => None,
        (_, Some(_)) => {
            return Err(ServiceError::invalid_field(format!(
                "webhook_secrets, object_types, refetch_on_tie and connect are for provider \
                 stripe only, not {provider}"
            )))
        }
    };
    if let Some(existing) = linked_item(ctx, provider, &input.item_id).await? {
        if existing.owner_id != input.owner_id {
            return Err(ServiceError::conflict(
                "conflict",
                format!(
                    "item {} is already linked to account {} of another owner",
                    existing.item_id, existing.id
                ),
            ));
        }
        let token = match &stripe {
            Some((link, token)) => {
                if existing.stripe.as_ref() != Some(link) {
                    return Err(ServiceError::conflict(
                        "conflict",
                        format!(
                            "Stripe account {} is already linked as {} with other settings \
                             (types, refetch_on_tie, connect or mode): a relink replaces only \
                             the credentials; unlink it first to change them",
                            existing.item_id, existing.id
                        ),
                    ));
                }
                token.clone()
            }
            None => AccessToken::new(input.access_token.clone()),
        };
        match relink(ctx, existing, token).await {
            Ok(account) => return Ok((account, Linked::Relinked)),
            // Unlinked (or deleted) between the lookup and the relink: the item is free
            // now, so this is a new link (and a second race is a plain conflict below).
            Err(ServiceError::Store(StoreError::AccountNotFound(_))) => {
                tracing::debug!(item_id = %input.item_id, "relink target unlinked meanwhile, linking anew");
            }
            Err(error) => return Err(error),
        }
    }
    let (settings, token) = match stripe {
        Some((link, token)) => (Some(link), token),
        None => (None, AccessToken::new(input.access_token)),
    };
    let mut account = Account::new_linked(
        provider,
        input.item_id,
        token,
        input.owner_id,
        aliases,
        ctx.clock.now(),
    );
    account.stripe = settings;
    record_account(&account.id);
    let record = account.clone();
    let receipt = ctx.store.run(move |s| s.link_account(&record)).await?;
    ctx.store.durable().await?;
    tracing::info!(
        account_id = %account.id,
        provider = %provider,
        item_id = %account.item_id,
        adopted_events = receipt.adopted_events,
        "account linked"
    );
    // Its actor starts the initial sync by itself (no cursor yet), consuming any events
    // adopted from before the link in the same commit.
    // Activation reads the account: off the async workers.
    let registry = ctx.registry.clone();
    let id = account.id.clone();
    match blocking(move || Ok(registry.activate(&id)?)).await {
        Ok(()) => {}
        // Unlinked (a concurrent DELETE) between the link and this activation: the link
        // happened and the unlink after it won; there is nothing to start.
        Err(ServiceError::Registry(RegistryError::NotLinked(_))) => {
            tracing::debug!(account_id = %account.id, "linked account unlinked before its activation");
        }
        Err(error) => return Err(error),
    }
    Ok((account, Linked::Created))
}

/// The linked account holding `item_id` at `provider`, if any.
async fn linked_item(
    ctx: &Context,
    provider: ProviderKind,
    item_id: &str,
) -> Result<Option<Account>, ServiceError> {
    let key = item_id.to_owned();
    let found = ctx
        .store
        .run(move |s| match s.resolve(&key)? {
            Resolved::Found(id) => s.get_account(&id),
            _ => Ok(None),
        })
        .await?;
    Ok(found.filter(|account| {
        account.status == LinkStatus::Linked
            && account.provider == provider
            && account.item_id == item_id
    }))
}

async fn relink(
    ctx: &Context,
    existing: Account,
    token: AccessToken,
) -> Result<Account, ServiceError> {
    let store = ctx.store.blocking().clone();
    let actors = ctx.actors.clone();
    let registry = ctx.registry.clone();
    let id = existing.id.clone();
    let account = blocking(move || {
        let account = store.relink_account(&id, &token)?;
        match crate::actors::resume::relinked(&actors, &registry, &id) {
            // Unlinked (a concurrent DELETE) right after the relink: the relink happened
            // and the unlink after it won; there is no actor to tell.
            Ok(()) | Err(RegistryError::NotLinked(_)) => {}
            Err(error) => return Err(error.into()),
        }
        Ok(account)
    })
    .await?;
    ctx.store.durable().await?;
    tracing::info!(
        account_id = %account.id,
        was_parked = existing.needs_reauth.is_some(),
        "account relinked with a new access token"
    );
    Ok(account)
}

/// Resolves an id, alias, item id or owner id to a stored account: `NotFound`, or a
/// `ambiguous_key` conflict naming the accounts that share it.
pub async fn resolve(ctx: &Context, key: &str) -> Result<Account, ServiceError> {
    check_key("account key", key)?;
    let not_found = || ServiceError::NotFound(format!("no account for {key:?}"));
    let owned = key.to_owned();
    let (resolved, account) = ctx
        .store
        .run(move |s| {
            let resolved = s.resolve(&owned)?;
            let account = match &resolved {
                Resolved::Found(id) => s.get_account(id)?,
                _ => None,
            };
            Ok((resolved, account))
        })
        .await?;
    match resolved {
        Resolved::Found(id) => {
            record_account(&id);
            account.ok_or_else(not_found)
        }
        Resolved::NotFound => Err(not_found()),
        Resolved::Ambiguous(ids) => Err(ServiceError::conflict(
            "ambiguous_key",
            format!(
                "{key:?} is shared by {} accounts; use an account id: {}",
                ids.len(),
                ids.iter()
                    .map(|i| i.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// A page of accounts in id order after `after`, and the id to continue after when
/// more follow.
pub async fn list(
    ctx: &Context,
    after: Option<AccountId>,
    limit: usize,
) -> Result<(Vec<Account>, Option<AccountId>), ServiceError> {
    let mut accounts = ctx
        .store
        .run(move |s| s.list_accounts(after.as_ref(), limit + 1))
        .await?;
    let has_more = accounts.len() > limit;
    accounts.truncate(limit);
    let next = if has_more {
        accounts.last().map(|a| a.id.clone())
    } else {
        None
    };
    Ok((accounts, next))
}

/// A page of an account's transactions, ordered by (date, id).
pub async fn transactions(
    ctx: &Context,
    id: &AccountId,
    query: TransactionQuery,
) -> Result<TransactionPage, ServiceError> {
    let id = id.clone();
    Ok(ctx
        .store
        .run(move |s| s.list_transactions(&id, &query))
        .await?)
}

/// Unlinks an account: first in the store, so nothing can activate it again, then its
/// actor is stopped (aborting a running sync), and only then, with `purge`, is its data
/// deleted. Durable before it returns.
pub async fn unlink(ctx: &Context, id: &AccountId, purge: bool) -> Result<(), ServiceError> {
    let unlink = |purge: bool| {
        let id = id.clone();
        // A purge scans and deletes every row: never on an async worker.
        ctx.store.run(move |s| s.unlink_account(&id, purge))
    };
    unlink(false).await?;
    ctx.registry.stop(id).await;
    if purge {
        unlink(true).await?;
    }
    ctx.store.durable().await?;
    tracing::info!(account_id = %id, purged = purge, "account unlinked");
    Ok(())
}

fn ensure_linked(account: &Account) -> Result<(), ServiceError> {
    if account.status != LinkStatus::Linked {
        return Err(ServiceError::conflict(
            "unlinked",
            format!("account {} is unlinked", account.id),
        ));
    }
    Ok(())
}

/// Asks the account's actor for a sync now (`unlinked` conflict for an unlinked one).
pub async fn request_sync(ctx: &Context, account: &Account) -> Result<(), ServiceError> {
    ensure_linked(account)?;
    // A cold actor is activated, which reads the account: off the async workers.
    let registry = ctx.registry.clone();
    let id = account.id.clone();
    blocking(move || Ok(registry.request_sync(&id, SyncReason::Manual)?)).await
}

/// Lifts a quarantine (and a `failed` mark), resets the restart count and activates the
/// account, which then syncs the webhooks kept meanwhile. Returns the lifted
/// quarantine, durable before it returns.
pub async fn resume(ctx: &Context, account: &Account) -> Result<Option<Quarantine>, ServiceError> {
    ensure_linked(account)?;
    let actors = ctx.actors.clone();
    let registry = ctx.registry.clone();
    let id = account.id.clone();
    let lifted =
        blocking(move || Ok(crate::actors::resume::resume(&actors, &registry, &id)?)).await?;
    // The cleared quarantine is on disk before we say so.
    ctx.store.durable().await?;
    tracing::info!(account_id = %account.id, was_quarantined = lifted.is_some(), "account resumed");
    Ok(lifted)
}

/// Everything the sync status of an account is made of.
#[derive(Debug)]
pub struct SyncReport {
    /// The one state name (see [`state_name`]).
    pub state: &'static str,
    /// The live actor's report, if one is live.
    pub actor: Option<ActorSnapshot>,
    /// Seconds since the cursor last advanced.
    pub cursor_age_seconds: Option<i64>,
    /// Inbox entries not yet consumed.
    pub pending_inbox: usize,
    /// Transactions held locally.
    pub transactions: u64,
    /// The supervisor's restart bookkeeping.
    pub supervision: Option<RestartSnapshot>,
    /// Quarantined on record or in the supervisor's memory.
    pub quarantined: bool,
    /// The pending retry record.
    pub retry: Option<RetryRecord>,
    /// What a human must do to get it syncing again, when it waits for one.
    pub action: Option<String>,
}

/// The sync status of `account`: asks its live actor (if any), the store and the
/// supervisor.
pub async fn sync_report(ctx: &Context, account: &Account) -> Result<SyncReport, ServiceError> {
    let actor = ctx.registry.snapshot(&account.id).await?;
    let id = account.id.clone();
    let (pending_inbox, transactions, retry) = ctx
        .store
        .run(move |s| {
            Ok((
                s.pending_inbox(&id)?.len(),
                s.count_transactions(&id)?,
                s.retry_of(&id)?,
            ))
        })
        .await?;
    let supervision = ctx.registry.restart_status(&account.id);
    let quarantined = is_quarantined(ctx, account);
    let state = state_name(account, actor.as_ref(), supervision.as_ref(), quarantined);
    Ok(SyncReport {
        state,
        actor,
        cursor_age_seconds: cursor_age(account, ctx.clock.now()),
        pending_inbox,
        transactions,
        supervision,
        quarantined,
        retry,
        action: required_action(account, quarantined),
    })
}

/// What a human must do for an account that waits for one, with its id filled in (for
/// a `failed` mark, the same words as its incident's `action`).
pub fn required_action(account: &Account, quarantined: bool) -> Option<String> {
    let action = if account.status == LinkStatus::Unlinked {
        return None;
    } else if let Some(mark) = &account.failed {
        mark.cause.action()
    } else if account.needs_reauth.as_ref().is_some_and(|m| !m.relinked) {
        "the user must log in again at the provider (Link's update mode); then a \
         LOGIN_REPAIRED webhook, or a relink (POST /v1/accounts with the same provider, \
         item_id and owner_id), resumes syncing"
    } else if quarantined {
        "its actor kept failing: look at its last error (GET /debug/actors/{id}), then \
         resume it: POST /v1/accounts/{id}/resume"
    } else {
        return None;
    };
    Some(action.replace("{id}", account.id.as_str()))
}

fn cursor_age(account: &Account, now: DateTime<Utc>) -> Option<i64> {
    account.cursor_updated_at.map(|at| (now - at).num_seconds())
}

/// Whether the account is quarantined, on record or (for the moment before the record
/// lands) in the supervisor's memory.
pub fn is_quarantined(ctx: &Context, account: &Account) -> bool {
    account.quarantine.is_some() || ctx.registry.is_quarantined_in_memory(&account.id)
}

/// The one state name the status and introspection APIs report: the live actor's phase
/// when there is one, else what the store and the supervisor say.
pub fn state_name(
    account: &Account,
    actor: Option<&ActorSnapshot>,
    supervision: Option<&RestartSnapshot>,
    quarantined: bool,
) -> &'static str {
    let restarting = supervision.is_some_and(|s| s.restart_due_at.is_some());
    match (&account.status, actor) {
        (LinkStatus::Unlinked, _) => "unlinked",
        _ if account
            .failed
            .as_ref()
            .is_some_and(|mark| mark.cause == GaveUpCause::AccessRevoked) =>
        {
            "access_revoked"
        }
        _ if account.failed.is_some() => "failed",
        _ if account.needs_reauth.is_some() => "needs_reauth",
        (_, Some(snapshot)) => snapshot.state,
        _ if quarantined => "quarantined",
        _ if restarting => "restarting",
        (_, None) => "passivated",
    }
}
