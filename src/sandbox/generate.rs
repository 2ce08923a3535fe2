//! Deterministic data for the sandbox bank: accounts, transaction histories, new and
//! modified transactions. Everything is drawn from a ChaCha stream seeded from the
//! sandbox seed and the item number, so the same seed always yields the same bank
//! (benchmarks and failing tests can be replayed), while different items differ.
//!
//! Dates are relative to the `today` the bank was created with; nothing here reads the
//! clock.

use chrono::{Duration, NaiveDate};
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use std::sync::OnceLock;

use crate::providers::plaid::wire::{
    PersonalFinanceCategory, PlaidAccount, PlaidBalances, PlaidCounterparty, PlaidLocation,
    PlaidPaymentMeta, PlaidTransaction,
};

/// How far back a generated history reaches.
const HISTORY_DAYS: i64 = 730;
/// Transactions younger than this may still be pending.
const PENDING_WINDOW_DAYS: i64 = 3;
const ID_ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The random stream of one item: independent of every other item's, reproducible.
pub(crate) fn item_rng(seed: u64, item_number: u64) -> ChaCha8Rng {
    // Mixing with an odd constant keeps (seed, n) and (seed + 1, n - 1) apart.
    ChaCha8Rng::seed_from_u64(seed ^ item_number.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// A Plaid-shaped id: 37 alphanumeric characters, like Plaid's item, account and
/// transaction ids.
pub(crate) fn plaid_id(rng: &mut impl Rng) -> String {
    // One draw from the item's stream, stretched with splitmix64: ids are the hot spot
    // of generating a large history and need uniqueness (checked by the caller), not
    // cryptographic quality. The slight modulo bias is irrelevant for ids.
    let mut state: u64 = rng.gen();
    let mut id = String::with_capacity(37);
    let mut word = 0u64;
    for i in 0..37 {
        if i % 10 == 0 {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            word = z ^ (z >> 31);
        }
        id.push(char::from(ID_ALPHABET[(word % 62) as usize]));
        word /= 62;
    }
    id
}

/// A sandbox access token in Plaid's format (`access-sandbox-<uuid>`).
pub(crate) fn access_token(rng: &mut impl Rng) -> String {
    format!(
        "access-sandbox-{}",
        uuid::Builder::from_random_bytes(rng.gen()).into_uuid()
    )
}

/// A sandbox public token in Plaid's format (`public-sandbox-<uuid>`).
pub(crate) fn public_token(rng: &mut impl Rng) -> String {
    format!(
        "public-sandbox-{}",
        uuid::Builder::from_random_bytes(rng.gen()).into_uuid()
    )
}

/// Which of an item's accounts a transaction lands in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AccountKind {
    Checking,
    Savings,
    Credit,
}

/// The accounts of one item, with the kind of each (parallel to the wire list).
pub(crate) struct GeneratedAccounts {
    /// As served by the API.
    pub accounts: Vec<PlaidAccount>,
    /// The kind of `accounts[i]`.
    pub kinds: Vec<AccountKind>,
}

impl GeneratedAccounts {
    fn id_of(&self, kind: AccountKind) -> Option<&str> {
        self.kinds
            .iter()
            .position(|k| *k == kind)
            .map(|i| self.accounts[i].account_id.as_str())
    }
}

/// Checking and a credit card always, savings most of the time.
pub(crate) fn accounts(rng: &mut ChaCha8Rng) -> GeneratedAccounts {
    let mut accounts = Vec::new();
    let mut kinds = Vec::new();
    let mut push = |rng: &mut ChaCha8Rng, kind: AccountKind| {
        let mask = format!("{:04}", rng.gen_range(0..10_000));
        let (name, official, account_type, subtype, current, limit) = match kind {
            AccountKind::Checking => (
                "Plaid Checking",
                "Plaid Gold Standard 0% Interest Checking",
                "depository",
                "checking",
                cents(rng.gen_range(50_000..900_000)),
                None,
            ),
            AccountKind::Savings => (
                "Plaid Saving",
                "Plaid Silver Standard 0.1% Interest Saving",
                "depository",
                "savings",
                cents(rng.gen_range(100_000..5_000_000)),
                None,
            ),
            AccountKind::Credit => (
                "Plaid Credit Card",
                "Plaid Diamond 12.5% APR Interest Credit Card",
                "credit",
                "credit card",
                cents(rng.gen_range(10_000..300_000)),
                Some(cents(rng.gen_range(5..20) * 100_000)),
            ),
        };
        accounts.push(PlaidAccount {
            account_id: plaid_id(rng),
            balances: PlaidBalances {
                available: if kind == AccountKind::Credit {
                    None
                } else {
                    Some(current)
                },
                current: Some(current),
                limit,
                iso_currency_code: Some("USD".to_string()),
                unofficial_currency_code: None,
            },
            mask: Some(mask),
            name: name.to_string(),
            official_name: Some(official.to_string()),
            account_type: account_type.to_string(),
            subtype: Some(subtype.to_string()),
        });
        kinds.push(kind);
    };
    push(rng, AccountKind::Checking);
    if rng.gen_bool(0.7) {
        push(rng, AccountKind::Savings);
    }
    push(rng, AccountKind::Credit);
    GeneratedAccounts { accounts, kinds }
}

/// A kind of spending (or income) with realistic names, categories and amounts.
struct Merchant {
    name: &'static str,
    merchant_name: Option<&'static str>,
    channel: &'static str,
    pfc: (&'static str, &'static str),
    legacy: &'static [&'static str],
    category_id: &'static str,
    /// Amount range in cents; negative amounts are money in.
    cents: (i64, i64),
    /// Store numbers make names look like real card descriptors.
    store_number: bool,
    account: AccountKind,
}

const MERCHANTS: &[Merchant] = &[
    Merchant {
        name: "Starbucks",
        merchant_name: Some("Starbucks"),
        channel: "in store",
        pfc: ("FOOD_AND_DRINK", "FOOD_AND_DRINK_COFFEE"),
        legacy: &["Food and Drink", "Restaurants", "Coffee Shop"],
        category_id: "13005043",
        cents: (295, 1_250),
        store_number: true,
        account: AccountKind::Credit,
    },
    Merchant {
        name: "McDonald's",
        merchant_name: Some("McDonald's"),
        channel: "in store",
        pfc: ("FOOD_AND_DRINK", "FOOD_AND_DRINK_FAST_FOOD"),
        legacy: &["Food and Drink", "Restaurants", "Fast Food"],
        category_id: "13005032",
        cents: (450, 2_400),
        store_number: true,
        account: AccountKind::Credit,
    },
    Merchant {
        name: "Chipotle Mexican Grill",
        merchant_name: Some("Chipotle"),
        channel: "in store",
        pfc: ("FOOD_AND_DRINK", "FOOD_AND_DRINK_FAST_FOOD"),
        legacy: &["Food and Drink", "Restaurants", "Fast Food"],
        category_id: "13005032",
        cents: (900, 3_200),
        store_number: true,
        account: AccountKind::Credit,
    },
    Merchant {
        name: "Whole Foods Market",
        merchant_name: Some("Whole Foods"),
        channel: "in store",
        pfc: ("FOOD_AND_DRINK", "FOOD_AND_DRINK_GROCERIES"),
        legacy: &["Shops", "Supermarkets and Groceries"],
        category_id: "19047000",
        cents: (1_500, 24_000),
        store_number: true,
        account: AccountKind::Credit,
    },
    Merchant {
        name: "Trader Joe's",
        merchant_name: Some("Trader Joe's"),
        channel: "in store",
        pfc: ("FOOD_AND_DRINK", "FOOD_AND_DRINK_GROCERIES"),
        legacy: &["Shops", "Supermarkets and Groceries"],
        category_id: "19047000",
        cents: (1_200, 16_000),
        store_number: true,
        account: AccountKind::Checking,
    },
    Merchant {
        name: "Amazon.com",
        merchant_name: Some("Amazon"),
        channel: "online",
        pfc: (
            "GENERAL_MERCHANDISE",
            "GENERAL_MERCHANDISE_ONLINE_MARKETPLACES",
        ),
        legacy: &["Shops", "Digital Purchase"],
        category_id: "19019000",
        cents: (799, 35_000),
        store_number: false,
        account: AccountKind::Credit,
    },
    Merchant {
        name: "Target",
        merchant_name: Some("Target"),
        channel: "in store",
        pfc: ("GENERAL_MERCHANDISE", "GENERAL_MERCHANDISE_SUPERSTORES"),
        legacy: &["Shops", "Department Stores"],
        category_id: "19012000",
        cents: (1_000, 18_000),
        store_number: true,
        account: AccountKind::Credit,
    },
    Merchant {
        name: "Uber",
        merchant_name: Some("Uber"),
        channel: "online",
        pfc: ("TRANSPORTATION", "TRANSPORTATION_TAXIS_AND_RIDE_SHARES"),
        legacy: &["Travel", "Taxi"],
        category_id: "22016000",
        cents: (700, 6_500),
        store_number: false,
        account: AccountKind::Credit,
    },
    Merchant {
        name: "Shell Oil",
        merchant_name: Some("Shell"),
        channel: "in store",
        pfc: ("TRANSPORTATION", "TRANSPORTATION_GAS"),
        legacy: &["Travel", "Gas Stations"],
        category_id: "22009000",
        cents: (2_000, 8_500),
        store_number: true,
        account: AccountKind::Credit,
    },
    Merchant {
        name: "United Airlines",
        merchant_name: Some("United Airlines"),
        channel: "online",
        pfc: ("TRAVEL", "TRAVEL_FLIGHTS"),
        legacy: &["Travel", "Airlines and Aviation Services"],
        category_id: "22001000",
        cents: (12_000, 90_000),
        store_number: false,
        account: AccountKind::Credit,
    },
    Merchant {
        name: "Netflix",
        merchant_name: Some("Netflix"),
        channel: "online",
        pfc: ("ENTERTAINMENT", "ENTERTAINMENT_TV_AND_MOVIES"),
        legacy: &["Service", "Subscription"],
        category_id: "18061000",
        cents: (1_549, 2_299),
        store_number: false,
        account: AccountKind::Credit,
    },
    Merchant {
        name: "Spotify",
        merchant_name: Some("Spotify"),
        channel: "online",
        pfc: ("ENTERTAINMENT", "ENTERTAINMENT_MUSIC_AND_AUDIO"),
        legacy: &["Service", "Subscription"],
        category_id: "18061000",
        cents: (1_099, 1_699),
        store_number: false,
        account: AccountKind::Credit,
    },
    Merchant {
        name: "Comcast Cable",
        merchant_name: Some("Comcast"),
        channel: "online",
        pfc: (
            "RENT_AND_UTILITIES",
            "RENT_AND_UTILITIES_INTERNET_AND_CABLE",
        ),
        legacy: &["Service", "Cable"],
        category_id: "18009000",
        cents: (6_000, 14_000),
        store_number: false,
        account: AccountKind::Checking,
    },
    Merchant {
        name: "PG&E Utility Payment",
        merchant_name: Some("PG&E"),
        channel: "online",
        pfc: (
            "RENT_AND_UTILITIES",
            "RENT_AND_UTILITIES_GAS_AND_ELECTRICITY",
        ),
        legacy: &["Service", "Utilities", "Electric"],
        category_id: "18068001",
        cents: (4_000, 22_000),
        store_number: false,
        account: AccountKind::Checking,
    },
    Merchant {
        name: "CVS Pharmacy",
        merchant_name: Some("CVS"),
        channel: "in store",
        pfc: ("MEDICAL", "MEDICAL_PHARMACIES_AND_SUPPLEMENTS"),
        legacy: &["Shops", "Pharmacies"],
        category_id: "19043000",
        cents: (500, 7_500),
        store_number: true,
        account: AccountKind::Credit,
    },
    Merchant {
        name: "Planet Fitness",
        merchant_name: Some("Planet Fitness"),
        channel: "other",
        pfc: ("PERSONAL_CARE", "PERSONAL_CARE_GYMS_AND_FITNESS_CENTERS"),
        legacy: &["Recreation", "Gyms and Fitness Centers"],
        category_id: "17018000",
        cents: (1_000, 2_499),
        store_number: false,
        account: AccountKind::Checking,
    },
    Merchant {
        name: "ATM Withdrawal",
        merchant_name: None,
        channel: "in store",
        pfc: ("TRANSFER_OUT", "TRANSFER_OUT_WITHDRAWAL"),
        legacy: &["Transfer", "Withdrawal", "ATM"],
        category_id: "21012002",
        cents: (2_000, 30_000),
        store_number: false,
        account: AccountKind::Checking,
    },
    Merchant {
        name: "Venmo Payment",
        merchant_name: Some("Venmo"),
        channel: "online",
        pfc: ("TRANSFER_OUT", "TRANSFER_OUT_ACCOUNT_TRANSFER"),
        legacy: &["Transfer", "Third Party", "Venmo"],
        category_id: "21010001",
        cents: (500, 20_000),
        store_number: false,
        account: AccountKind::Checking,
    },
    Merchant {
        name: "Rent Payment - Parkview Apartments",
        merchant_name: None,
        channel: "other",
        pfc: ("RENT_AND_UTILITIES", "RENT_AND_UTILITIES_RENT"),
        legacy: &["Payment", "Rent"],
        category_id: "16002000",
        cents: (150_000, 320_000),
        store_number: false,
        account: AccountKind::Checking,
    },
    Merchant {
        name: "ACME Corp Payroll",
        merchant_name: None,
        channel: "other",
        pfc: ("INCOME", "INCOME_WAGES"),
        legacy: &["Transfer", "Payroll"],
        category_id: "21009000",
        cents: (-650_000, -180_000),
        store_number: false,
        account: AccountKind::Checking,
    },
    Merchant {
        name: "Interest Payment",
        merchant_name: None,
        channel: "other",
        pfc: ("INCOME", "INCOME_INTEREST_EARNED"),
        legacy: &["Transfer", "Credit", "Interest"],
        category_id: "21005000",
        cents: (-2_500, -10),
        store_number: false,
        account: AccountKind::Savings,
    },
    Merchant {
        name: "Credit Card Autopay",
        merchant_name: None,
        channel: "other",
        pfc: ("LOAN_PAYMENTS", "LOAN_PAYMENTS_CREDIT_CARD_PAYMENT"),
        legacy: &["Payment", "Credit Card"],
        category_id: "16001000",
        cents: (-250_000, -20_000),
        store_number: false,
        account: AccountKind::Credit,
    },
];

/// What Plaid's enrichment adds for a recognised merchant: fixed per merchant.
struct Enrichment {
    merchant_name: &'static str,
    entity_id: String,
    website: String,
    counterparty_type: &'static str,
}

/// The enrichment of every named merchant. Computed once: the entity ids come from
/// their own stream seeded by the merchant's name, so they are stable across items and
/// seeds and draw nothing from an item's stream.
fn enrichments() -> &'static [Enrichment] {
    static TABLE: OnceLock<Vec<Enrichment>> = OnceLock::new();
    TABLE.get_or_init(|| {
        MERCHANTS
            .iter()
            .filter_map(|m| m.merchant_name)
            .map(|name| {
                // FNV-1a: a fixed, dependency-free hash (std's is randomly keyed).
                let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                });
                let slug: String = name
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .map(|c| c.to_ascii_lowercase())
                    .collect();
                Enrichment {
                    merchant_name: name,
                    entity_id: plaid_id(&mut ChaCha8Rng::seed_from_u64(seed)),
                    website: format!("{slug}.com"),
                    counterparty_type: match name {
                        "Amazon" => "marketplace",
                        "Venmo" => "payment_app",
                        _ => "merchant",
                    },
                }
            })
            .collect()
    })
}

/// Fills in what Plaid's enrichment derives from a transaction's merchant, category
/// and channel: counterparties, website, merchant entity id, category icon and
/// confidence, and the deprecated `transaction_type`. Plaid sends these by default and
/// its generated client libraries raise on reading an absent attribute, so every
/// transaction the API serves goes through here. Done when serving rather than when
/// generating because it is fully derived: stored (and persisted) transactions stay
/// small, which matters for histories of millions. Idempotent.
pub(crate) fn enrich(txn: &mut PlaidTransaction) {
    if let Some(pfc) = &mut txn.personal_finance_category {
        pfc.confidence_level
            .get_or_insert_with(|| "VERY_HIGH".to_string());
        txn.personal_finance_category_icon_url
            .get_or_insert_with(|| {
                format!(
                    "https://plaid-category-icons.plaid.com/PFC_{}.png",
                    pfc.primary
                )
            });
    }
    if txn.transaction_type.is_none() {
        let kind = match txn.payment_channel.as_str() {
            "online" => "digital",
            "in store" => "place",
            _ => "special",
        };
        txn.transaction_type = Some(kind.to_string());
    }
    let Some(name) = txn.merchant_name.as_deref() else {
        return;
    };
    let Some(e) = enrichments().iter().find(|e| e.merchant_name == name) else {
        return;
    };
    txn.website.get_or_insert_with(|| e.website.clone());
    txn.merchant_entity_id
        .get_or_insert_with(|| e.entity_id.clone());
    if txn.counterparties.is_empty() {
        txn.counterparties.push(PlaidCounterparty {
            name: e.merchant_name.to_string(),
            counterparty_type: e.counterparty_type.to_string(),
            website: Some(e.website.clone()),
            logo_url: None,
            entity_id: Some(e.entity_id.clone()),
            confidence_level: Some("VERY_HIGH".to_string()),
        });
    }
}

fn cents(c: i64) -> f64 {
    // i64 cents / 100 round-trips through serde_json as the shortest 2-decimal text.
    c as f64 / 100.0
}

/// An amount's value in cents (amounts always carry at most two decimals).
pub(crate) fn to_cents(amount: f64) -> i64 {
    (amount * 100.0).round() as i64
}

/// Formats a date as Plaid does (`YYYY-MM-DD`).
pub(crate) fn date_str(date: NaiveDate) -> String {
    use chrono::Datelike;
    // Plain integer formatting: chrono's format machinery is several times slower and
    // this runs for every generated transaction.
    format!("{:04}-{:02}-{:02}", date.year(), date.month(), date.day())
}

/// One new transaction dated `age_days` before `today`, on one of `accounts`.
/// The caller makes the id unique within the item.
pub(crate) fn transaction(
    rng: &mut ChaCha8Rng,
    accounts: &GeneratedAccounts,
    today: NaiveDate,
    age_days: i64,
) -> PlaidTransaction {
    let merchant = &MERCHANTS[rng.gen_range(0..MERCHANTS.len())];
    let account_id = accounts
        .id_of(merchant.account)
        .or_else(|| accounts.id_of(AccountKind::Checking))
        .unwrap_or(&accounts.accounts[0].account_id)
        .to_string();
    let date = today - Duration::days(age_days);
    let pending = age_days <= PENDING_WINDOW_DAYS && rng.gen_bool(0.5);
    let authorized = if pending {
        date
    } else {
        date - Duration::days(rng.gen_range(0..=2))
    };
    let store_number = merchant
        .store_number
        .then(|| rng.gen_range(100..10_000).to_string());
    let name = match &store_number {
        Some(number) => format!("{} #{number}", merchant.name),
        None => merchant.name.to_string(),
    };
    let amount = rng.gen_range(merchant.cents.0..=merchant.cents.1);
    PlaidTransaction {
        transaction_id: plaid_id(rng),
        account_id,
        amount: cents(amount),
        iso_currency_code: Some("USD".to_string()),
        unofficial_currency_code: None,
        date: date_str(date),
        authorized_date: Some(date_str(authorized)),
        datetime: None,
        name,
        merchant_name: merchant.merchant_name.map(str::to_string),
        payment_channel: merchant.channel.to_string(),
        pending,
        pending_transaction_id: None,
        category: Some(merchant.legacy.iter().map(|s| s.to_string()).collect()),
        category_id: Some(merchant.category_id.to_string()),
        personal_finance_category: Some(PersonalFinanceCategory {
            primary: merchant.pfc.0.to_string(),
            detailed: merchant.pfc.1.to_string(),
            confidence_level: None,
        }),
        transaction_code: None,
        location: PlaidLocation {
            store_number,
            ..PlaidLocation::default()
        },
        payment_meta: PlaidPaymentMeta::default(),
        account_owner: None,
        authorized_datetime: None,
        // Derived fields are left for `enrich`, applied when serving.
        check_number: None,
        counterparties: Vec::new(),
        logo_url: None,
        website: None,
        merchant_entity_id: None,
        personal_finance_category_icon_url: None,
        transaction_type: None,
    }
}

/// An age for a history transaction: uniform over the last two years.
pub(crate) fn history_age(rng: &mut ChaCha8Rng) -> i64 {
    rng.gen_range(0..HISTORY_DAYS)
}

/// An age for a freshly arriving transaction: the last few days.
pub(crate) fn recent_age(rng: &mut ChaCha8Rng) -> i64 {
    rng.gen_range(0..=PENDING_WINDOW_DAYS)
}

/// Changes a transaction the way banks do after the fact: the amount always (tips,
/// final amounts), sometimes the descriptor, a pending one posts, and sometimes the
/// posted date moves a few days later (never past `today`).
pub(crate) fn modify(rng: &mut ChaCha8Rng, txn: &mut PlaidTransaction, today: NaiveDate) {
    let old = to_cents(txn.amount);
    let factor: f64 = rng.gen_range(0.5..1.5);
    let mut new = (old as f64 * factor).round() as i64;
    if new == old {
        new += if old < 0 { -1 } else { 1 };
    }
    txn.amount = cents(new);
    if rng.gen_bool(0.3) {
        txn.name = if txn.name.ends_with(" (ADJ)") {
            txn.name.trim_end_matches(" (ADJ)").to_string()
        } else {
            format!("{} (ADJ)", txn.name)
        };
    }
    if txn.pending {
        txn.pending = false;
    }
    if rng.gen_bool(0.2) {
        if let Ok(date) = NaiveDate::parse_from_str(&txn.date, "%Y-%m-%d") {
            let moved = (date + Duration::days(rng.gen_range(1..=3))).min(today);
            txn.date = date_str(moved);
        }
    }
}

/// A transaction from `/sandbox/transactions/create` input (already validated).
pub(crate) fn from_input(
    rng: &mut ChaCha8Rng,
    account_id: &str,
    amount: f64,
    posted: NaiveDate,
    transacted: NaiveDate,
    description: &str,
    currency: Option<&str>,
) -> PlaidTransaction {
    PlaidTransaction {
        transaction_id: plaid_id(rng),
        account_id: account_id.to_string(),
        amount: cents(to_cents(amount)),
        iso_currency_code: Some(currency.unwrap_or("USD").to_string()),
        unofficial_currency_code: None,
        date: date_str(posted),
        authorized_date: Some(date_str(transacted)),
        datetime: None,
        name: description.to_string(),
        merchant_name: None,
        payment_channel: "other".to_string(),
        pending: false,
        pending_transaction_id: None,
        category: None,
        category_id: None,
        personal_finance_category: None,
        transaction_code: None,
        location: PlaidLocation::default(),
        payment_meta: PlaidPaymentMeta::default(),
        account_owner: None,
        authorized_datetime: None,
        check_number: None,
        counterparties: Vec::new(),
        logo_url: None,
        website: None,
        merchant_entity_id: None,
        personal_finance_category_icon_url: None,
        transaction_type: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2024, 6, 1).unwrap()
    }

    #[test]
    fn same_seed_and_item_number_generate_the_same_data() {
        let gen = |seed, n| {
            let mut rng = item_rng(seed, n);
            let accounts = accounts(&mut rng);
            let txn = transaction(&mut rng, &accounts, today(), 10);
            (accounts.accounts, txn)
        };
        assert_eq!(gen(7, 1), gen(7, 1));
        assert_ne!(gen(7, 1), gen(7, 2));
        assert_ne!(gen(7, 1), gen(8, 1));
    }

    #[test]
    fn amounts_have_at_most_two_decimals_and_serialize_short() {
        let mut rng = item_rng(1, 1);
        let accounts = accounts(&mut rng);
        for _ in 0..500 {
            let age = history_age(&mut rng);
            let txn = transaction(&mut rng, &accounts, today(), age);
            let text = serde_json::to_value(txn.amount).unwrap().to_string();
            let decimals = text.split('.').nth(1).map_or(0, str::len);
            assert!(decimals <= 2, "{text}");
            assert!(txn.amount != 0.0);
        }
    }

    #[test]
    fn enrich_derives_stable_merchant_fields_and_is_idempotent() {
        let mut per_merchant: std::collections::HashMap<String, PlaidTransaction> =
            std::collections::HashMap::new();
        for seed in 1..4 {
            let mut rng = item_rng(seed, 1);
            let accounts = accounts(&mut rng);
            for _ in 0..300 {
                let age = history_age(&mut rng);
                let mut txn = transaction(&mut rng, &accounts, today(), age);
                assert!(
                    txn.counterparties.is_empty(),
                    "stored transactions stay lean"
                );
                enrich(&mut txn);
                let once = txn.clone();
                enrich(&mut txn);
                assert_eq!(txn, once);
                let pfc = txn.personal_finance_category.as_ref().unwrap();
                assert_eq!(pfc.confidence_level.as_deref(), Some("VERY_HIGH"));
                assert_eq!(
                    txn.personal_finance_category_icon_url,
                    Some(format!(
                        "https://plaid-category-icons.plaid.com/PFC_{}.png",
                        pfc.primary
                    ))
                );
                let expected_type = match txn.payment_channel.as_str() {
                    "online" => "digital",
                    "in store" => "place",
                    _ => "special",
                };
                assert_eq!(txn.transaction_type.as_deref(), Some(expected_type));
                let Some(name) = txn.merchant_name.clone() else {
                    assert!(txn.counterparties.is_empty() && txn.website.is_none());
                    continue;
                };
                assert_eq!(txn.counterparties.len(), 1);
                assert_eq!(txn.counterparties[0].name, name);
                assert_eq!(txn.counterparties[0].entity_id, txn.merchant_entity_id);
                assert_eq!(txn.merchant_entity_id.as_ref().unwrap().len(), 37);
                // The same merchant is the same entity in every item and seed.
                if let Some(seen) = per_merchant.get(&name) {
                    assert_eq!(seen.merchant_entity_id, txn.merchant_entity_id);
                    assert_eq!(seen.website, txn.website);
                } else {
                    per_merchant.insert(name, txn);
                }
            }
        }
        let ids: std::collections::HashSet<_> = per_merchant
            .values()
            .map(|t| t.merchant_entity_id.clone())
            .collect();
        assert_eq!(
            ids.len(),
            per_merchant.len(),
            "merchants share an entity id"
        );
        assert_eq!(
            per_merchant["Amazon"].counterparties[0].counterparty_type,
            "marketplace"
        );
    }

    #[test]
    fn custom_transactions_get_only_the_channel_derived_type() {
        let mut rng = item_rng(1, 1);
        let mut txn = from_input(&mut rng, "acc", 12.34, today(), today(), "x", None);
        enrich(&mut txn);
        assert_eq!(txn.transaction_type.as_deref(), Some("special"));
        assert!(txn.personal_finance_category_icon_url.is_none());
        assert!(txn.counterparties.is_empty() && txn.merchant_entity_id.is_none());
    }

    #[test]
    fn modify_always_changes_the_amount_and_posts_pending() {
        let mut rng = item_rng(3, 1);
        let accounts = accounts(&mut rng);
        for _ in 0..200 {
            let mut txn = transaction(&mut rng, &accounts, today(), 1);
            let before = txn.clone();
            modify(&mut rng, &mut txn, today());
            assert_ne!(to_cents(before.amount), to_cents(txn.amount));
            assert!(!txn.pending);
            assert!(txn.date.as_str() <= "2024-06-01");
        }
    }
}
