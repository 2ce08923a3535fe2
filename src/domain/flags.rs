//! Runtime flags: switches ops can flip through the API without a deploy, scoped per
//! market and segment, persisted, and with every change recorded (who, when, from what
//! to what). The only flag today chooses the account-opening path: the bank's
//! asynchronous API (on) or its legacy synchronous one (off). A flag is read when an
//! operation is created, so a flip changes only operations created afterwards.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::operations::Segment;

/// Which flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagName {
    /// Account openings use the bank's asynchronous API (on) or the legacy synchronous
    /// one (off).
    AccountOpeningAsync,
}

impl FlagName {
    /// Every flag.
    pub const ALL: [FlagName; 1] = [FlagName::AccountOpeningAsync];

    /// The snake_case name used in URLs and store keys.
    pub fn as_str(self) -> &'static str {
        match self {
            FlagName::AccountOpeningAsync => "account_opening_async",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<FlagName> {
        FlagName::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

impl fmt::Display for FlagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One flag's scope: the flag, a market and a segment.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FlagKey {
    /// Which flag.
    pub name: FlagName,
    /// ISO 3166-1 alpha-2 market.
    pub market: String,
    /// Segment.
    pub segment: Segment,
}

impl FlagKey {
    /// `name/market/segment`, the flag's store key (and its URL path).
    pub fn path(&self) -> String {
        format!("{}/{}/{}", self.name, self.market, self.segment)
    }
}

/// A flag's current value, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flag {
    /// Which flag, where.
    pub key: FlagKey,
    /// On or off.
    pub enabled: bool,
    /// When it was last set.
    pub updated_at: DateTime<Utc>,
    /// Who set it.
    pub updated_by: String,
    /// How many times it was set.
    pub version: u64,
}

/// One recorded change of a flag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlagChange {
    /// Which flag, where.
    pub key: FlagKey,
    /// The value before (`None`: it had never been set, the configured default held).
    pub from: Option<bool>,
    /// The value set.
    pub to: bool,
    /// Who set it.
    pub by: String,
    /// Why, when they said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}
