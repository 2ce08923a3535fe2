//! Runtime flags: read (the stored value, or the configured default for a market and
//! segment never set), set (validated, recorded with who and why), and their history.
//! Every market of `operations.markets` times every segment has each flag, so the list
//! shows what applies everywhere, not only what was ever set.

use serde::Serialize;

use super::operations::check_market;
use super::{Context, ServiceError};
use crate::domain::flags::{Flag, FlagChange, FlagKey, FlagName};
use crate::domain::operations::{OpeningPath, Segment};

/// A flag as the API shows it: its effective value and where it comes from.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct FlagView {
    /// The flag's name.
    #[schema(value_type = String, example = "account_opening_async")]
    pub name: FlagName,
    /// The market.
    #[schema(example = "NL")]
    pub market: String,
    /// The segment.
    #[schema(value_type = String, example = "company")]
    pub segment: Segment,
    /// The value in effect.
    pub enabled: bool,
    /// `default` (never set: `operations.async_by_default`) or `set`.
    #[schema(example = "set")]
    pub source: &'static str,
    /// When it was last set.
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Who set it last.
    pub updated_by: Option<String>,
    /// How many times it was set.
    pub version: u64,
}

impl FlagView {
    fn of(key: FlagKey, stored: Option<Flag>, default: bool) -> FlagView {
        match stored {
            Some(flag) => FlagView {
                name: key.name,
                market: key.market,
                segment: key.segment,
                enabled: flag.enabled,
                source: "set",
                updated_at: Some(flag.updated_at),
                updated_by: Some(flag.updated_by),
                version: flag.version,
            },
            None => FlagView {
                name: key.name,
                market: key.market,
                segment: key.segment,
                enabled: default,
                source: "default",
                updated_at: None,
                updated_by: None,
                version: 0,
            },
        }
    }
}

fn default_of(ctx: &Context, name: FlagName) -> bool {
    match name {
        FlagName::AccountOpeningAsync => ctx.settings.operations.async_by_default,
    }
}

/// The path an opening created now in `market` for `segment` takes.
pub async fn opening_path(
    ctx: &Context,
    market: &str,
    segment: Segment,
) -> Result<OpeningPath, ServiceError> {
    let key = FlagKey {
        name: FlagName::AccountOpeningAsync,
        market: market.to_string(),
        segment,
    };
    let stored = ctx.store.run(move |s| s.get_flag(&key)).await?;
    let enabled = stored.map_or(default_of(ctx, FlagName::AccountOpeningAsync), |f| {
        f.enabled
    });
    Ok(if enabled {
        OpeningPath::Async
    } else {
        OpeningPath::Legacy
    })
}

/// Every flag for every served market and segment.
pub async fn list(ctx: &Context) -> Result<Vec<FlagView>, ServiceError> {
    let stored = ctx.store.run(|s| s.list_flags()).await?;
    let mut views = Vec::new();
    for name in FlagName::ALL {
        for market in &ctx.settings.operations.markets {
            for segment in Segment::ALL {
                let key = FlagKey {
                    name,
                    market: market.clone(),
                    segment,
                };
                let flag = stored.iter().find(|f| f.key == key).cloned();
                views.push(FlagView::of(key, flag, default_of(ctx, name)));
            }
        }
    }
    Ok(views)
}

/// Parses and checks a flag's path parameters.
pub fn key_of(
    ctx: &Context,
    name: &str,
    market: &str,
    segment: &str,
) -> Result<FlagKey, ServiceError> {
    let name = FlagName::parse(name).ok_or_else(|| {
        ServiceError::NotFound(format!(
            "no flag named {name:?}; flags: {}",
            FlagName::ALL.map(FlagName::as_str).join(", ")
        ))
    })?;
    check_market(ctx, market)?;
    let segment = Segment::parse(segment).ok_or_else(|| {
        ServiceError::invalid_field(format!(
            "segment {segment:?} is unknown; segments: company, freelancer"
        ))
    })?;
    Ok(FlagKey {
        name,
        market: market.to_string(),
        segment,
    })
}

/// One flag's effective value.
pub async fn get(ctx: &Context, key: FlagKey) -> Result<FlagView, ServiceError> {
    let read = key.clone();
    let stored = ctx.store.run(move |s| s.get_flag(&read)).await?;
    let default = default_of(ctx, key.name);
    Ok(FlagView::of(key, stored, default))
}

/// Sets a flag, recording who and why. Only operations created afterwards see it.
pub async fn set(
    ctx: &Context,
    key: FlagKey,
    enabled: bool,
    by: String,
    reason: Option<String>,
) -> Result<(FlagView, FlagChange), ServiceError> {
    if by.trim().is_empty() || by.chars().count() > 100 || by.chars().any(char::is_control) {
        return Err(ServiceError::invalid_field(
            "changed_by must be 1 to 100 characters without control characters",
        ));
    }
    if let Some(reason) = &reason {
        if reason.trim().is_empty()
            || reason.chars().count() > 500
            || reason.chars().any(char::is_control)
        {
            return Err(ServiceError::invalid_field(
                "reason must be 1 to 500 characters without control characters (leave it out for none)",
            ));
        }
    }
    let change = FlagChange {
        key: key.clone(),
        from: None,
        to: enabled,
        by,
        reason,
        at: ctx.clock.now(),
    };
    let (flag, change) = ctx.store.run(move |s| s.set_flag(&change)).await?;
    ctx.store.durable().await?;
    tracing::info!(flag = %key.path(), enabled, by = %change.by, "flag set");
    let default = default_of(ctx, key.name);
    Ok((FlagView::of(key, Some(flag), default), change))
}

/// Which flag changes to list: each part narrows, `None` takes all.
#[derive(Clone, Debug, Default)]
pub struct HistoryFilter {
    /// Only this flag.
    pub name: Option<FlagName>,
    /// Only this market.
    pub market: Option<String>,
    /// Only this segment.
    pub segment: Option<Segment>,
}

/// The most changes read to filter the history by part of a key (flag changes are
/// rare: this is years of them).
const HISTORY_SCAN: usize = 100_000;

/// Recorded changes, newest first, at most `limit`: of one flag (the whole key given:
/// read by its index), or filtered by the parts given.
pub async fn history(
    ctx: &Context,
    filter: HistoryFilter,
    limit: usize,
) -> Result<Vec<FlagChange>, ServiceError> {
    if let (Some(name), Some(market), Some(segment)) =
        (filter.name, filter.market.clone(), filter.segment)
    {
        let key = FlagKey {
            name,
            market,
            segment,
        };
        return Ok(ctx
            .store
            .run(move |s| s.flag_history(Some(&key), limit))
            .await?);
    }
    let scan = if filter.name.is_none() && filter.market.is_none() && filter.segment.is_none() {
        limit
    } else {
        HISTORY_SCAN
    };
    let all = ctx.store.run(move |s| s.flag_history(None, scan)).await?;
    Ok(all
        .into_iter()
        .filter(|c| {
            filter.name.is_none_or(|n| n == c.key.name)
                && filter.market.as_ref().is_none_or(|m| *m == c.key.market)
                && filter.segment.is_none_or(|s| s == c.key.segment)
        })
        .take(limit)
        .collect())
}
