//! The objects the sandbox makes up: realistic minimal renderings of each type (the
//! fields Stripe always sends, with plausible values and a plausible mix of statuses),
//! and the changes `mutate` applies, one lifecycle step at a time (an invoice is
//! finalized, then paid; a payout goes in transit, then is paid).
//!
//! Objects are written straight to JSON text: `generate` makes 100,000 of them in a
//! fraction of a second, which building `serde_json::Value`s would not. Every string
//! interpolated comes from the sandbox itself (ids, word lists), never from a caller,
//! so the text is always valid JSON; callers' fields are merged afterwards, as values.

use std::fmt::Write;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};

use super::objects::{index, IdMaker};
use crate::domain::stripe::ObjectType;

/// How far back generated objects go (about two years).
const HISTORY_SECS: i64 = 2 * 365 * 86_400;
/// A billing period.
const MONTH_SECS: i64 = 30 * 86_400;
/// Share of generated objects that take the previous one's second (same-second ties).
const TIE_RATE: f64 = 0.1;

const PRODUCT_NAMES: [&str; 8] = [
    "Starter plan",
    "Pro plan",
    "Team seat",
    "Enterprise plan",
    "Storage add-on",
    "Support package",
    "API credits",
    "Onboarding",
];
const FIRST_NAMES: [&str; 8] = [
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken",
];
const LAST_NAMES: [&str; 8] = [
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
];

/// Whether an object is made up as history (a random status from a realistic mix) or
/// created now (the status a new object starts in, no optional fields set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Flavor {
    /// Generated history.
    History,
    /// A new object, as an API create makes it.
    New,
}

/// The objects a new object points at, one id per referenced type.
#[derive(Debug, Default)]
pub(super) struct Refs([Option<String>; 10]);

impl Refs {
    /// The types an object of `object_type` refers to.
    pub fn needed(object_type: ObjectType) -> &'static [ObjectType] {
        use ObjectType::*;
        match object_type {
            Prices => &[Products],
            Subscriptions => &[Customers, Prices, Products],
            Invoices => &[Customers, Subscriptions],
            PaymentIntents => &[Customers],
            Charges => &[Customers, PaymentIntents],
            Refunds | Disputes => &[Charges, PaymentIntents],
            Products | Customers | Payouts => &[],
        }
    }

    /// Sets the id of the referenced `object_type`.
    pub fn set(&mut self, object_type: ObjectType, id: String) {
        self.0[index(object_type)] = Some(id);
    }

    fn get(&self, object_type: ObjectType) -> &str {
        self.0[index(object_type)].as_deref().unwrap_or("")
    }
}

/// What rendering draws from.
pub(super) struct Draw<'a> {
    /// Ids of the sub-objects (subscription items, balance transactions).
    pub ids: &'a mut IdMaker,
    /// Values and statuses.
    pub rng: &'a mut ChaCha8Rng,
    /// The sandbox's now (unix seconds).
    pub now: i64,
    /// History or new.
    pub flavor: Flavor,
}

impl Draw<'_> {
    fn pick<'w>(&mut self, weighted: &[(&'w str, u32)]) -> &'w str {
        if self.flavor == Flavor::New {
            return weighted[0].0;
        }
        let total: u32 = weighted.iter().map(|(_, w)| w).sum();
        let mut roll = self.rng.gen_range(0..total.max(1));
        for (value, weight) in weighted {
            if roll < *weight {
                return value;
            }
            roll -= weight;
        }
        weighted[0].0
    }

    fn amount(&mut self) -> i64 {
        self.rng.gen_range(5..=500) * 100
    }

    fn chance(&mut self, p: f64) -> bool {
        self.flavor == Flavor::History && self.rng.gen_bool(p)
    }
}

/// A `created` for generated history: within the last two years before `now`, or (one
/// time in ten) the previous object's second.
pub(super) fn created_in_past(rng: &mut ChaCha8Rng, now: i64, previous: &mut Option<i64>) -> i64 {
    let created = match *previous {
        Some(at) if rng.gen_bool(TIE_RATE) => at,
        _ => now - rng.gen_range(0..HISTORY_SECS),
    };
    *previous = Some(created);
    created
}

fn opt_num(value: Option<i64>) -> String {
    value.map_or_else(|| "null".to_owned(), |v| v.to_string())
}

/// The JSON text of an object of `object_type`.
pub(super) fn render(
    object_type: ObjectType,
    id: &str,
    created: i64,
    refs: &Refs,
    draw: &mut Draw<'_>,
) -> String {
    // Room for the whole rendering (the longest, a subscription, is ~1.2 kB), trimmed
    // afterwards: 100,000 objects must not each keep a kilobyte of slack.
    let mut out = String::with_capacity(1536);
    // Writing to a String cannot fail.
    let _ = match object_type {
        ObjectType::Products => {
            let active = !draw.chance(0.1);
            let name = PRODUCT_NAMES[draw.rng.gen_range(0..PRODUCT_NAMES.len())];
            write!(
                out,
                r#"{{"id":"{id}","object":"product","active":{active},"attributes":[],"created":{created},"default_price":null,"description":null,"images":[],"livemode":false,"marketing_features":[],"metadata":{{}},"name":"{name}","package_dimensions":null,"shippable":null,"statement_descriptor":null,"tax_code":null,"type":"service","unit_label":null,"updated":{created},"url":null}}"#
            )
        }
        ObjectType::Prices => {
            let active = !draw.chance(0.1);
            let amount = draw.amount();
            let recurring = draw.flavor == Flavor::History && draw.rng.gen_bool(0.6);
            let (kind, recurring) = if recurring {
                let interval = draw.pick(&[("month", 3), ("year", 1)]);
                (
                    "recurring",
                    format!(
                        r#"{{"aggregate_usage":null,"interval":"{interval}","interval_count":1,"meter":null,"trial_period_days":null,"usage_type":"licensed"}}"#
                    ),
                )
            } else {
                ("one_time", "null".to_owned())
            };
            let product = refs.get(ObjectType::Products);
            write!(
                out,
                r#"{{"id":"{id}","object":"price","active":{active},"billing_scheme":"per_unit","created":{created},"currency":"usd","custom_unit_amount":null,"livemode":false,"lookup_key":null,"metadata":{{}},"nickname":null,"product":"{product}","recurring":{recurring},"tax_behavior":"unspecified","tiers_mode":null,"transform_quantity":null,"type":"{kind}","unit_amount":{amount},"unit_amount_decimal":"{amount}"}}"#
            )
        }
        ObjectType::Customers => {
            let first = FIRST_NAMES[draw.rng.gen_range(0..FIRST_NAMES.len())];
            let last = LAST_NAMES[draw.rng.gen_range(0..LAST_NAMES.len())];
            let n = draw.rng.gen_range(1..10_000);
            let invoice_prefix = draw.ids.random(8).to_uppercase();
            write!(
                out,
                r#"{{"id":"{id}","object":"customer","address":null,"balance":0,"created":{created},"currency":null,"default_source":null,"delinquent":false,"description":null,"discount":null,"email":"{lf}.{ll}{n}@example.com","invoice_prefix":"{invoice_prefix}","invoice_settings":{{"custom_fields":null,"default_payment_method":null,"footer":null,"rendering_options":null}},"livemode":false,"metadata":{{}},"name":"{first} {last}","next_invoice_sequence":1,"phone":null,"preferred_locales":[],"shipping":null,"tax_exempt":"none","test_clock":null}}"#,
                lf = first.to_lowercase(),
                ll = last.to_lowercase(),
            )
        }
        ObjectType::Subscriptions => {
            let status = draw.pick(&[
                ("active", 60),
                ("trialing", 10),
                ("past_due", 10),
                ("canceled", 15),
                ("incomplete", 5),
            ]);
            let age = (draw.now - created).max(0);
            let period_start = created + age / MONTH_SECS * MONTH_SECS;
            let ended = (status == "canceled").then(|| created + draw.rng.gen_range(0..=age));
            let trial = (status == "trialing").then(|| (created, created + 14 * 86_400));
            let amount = draw.amount();
            let item = draw.ids.next("si");
            write!(
                out,
                r#"{{"id":"{id}","object":"subscription","application":null,"billing_cycle_anchor":{created},"cancel_at":null,"cancel_at_period_end":false,"canceled_at":{ended},"collection_method":"charge_automatically","created":{created},"currency":"usd","current_period_end":{period_end},"current_period_start":{period_start},"customer":"{customer}","days_until_due":null,"default_payment_method":null,"description":null,"discount":null,"ended_at":{ended},"items":{{"object":"list","data":[{{"id":"{item}","object":"subscription_item","created":{created},"metadata":{{}},"price":{{"id":"{price}","object":"price","active":true,"currency":"usd","product":"{product}","recurring":{{"interval":"month","interval_count":1,"usage_type":"licensed"}},"type":"recurring","unit_amount":{amount}}},"quantity":1,"subscription":"{id}"}}],"has_more":false,"total_count":1,"url":"/v1/subscription_items?subscription={id}"}},"latest_invoice":null,"livemode":false,"metadata":{{}},"start_date":{created},"status":"{status}","trial_end":{trial_end},"trial_start":{trial_start}}}"#,
                ended = opt_num(ended),
                period_end = period_start + MONTH_SECS,
                customer = refs.get(ObjectType::Customers),
                price = refs.get(ObjectType::Prices),
                product = refs.get(ObjectType::Products),
                trial_end = opt_num(trial.map(|t| t.1)),
                trial_start = opt_num(trial.map(|t| t.0)),
            )
        }
        ObjectType::Invoices => {
            let status = draw.pick(&[
                ("draft", 10),
                ("paid", 60),
                ("open", 20),
                ("void", 5),
                ("uncollectible", 5),
            ]);
            let amount = draw.amount();
            let paid = status == "paid";
            let finalized = (status != "draft").then_some(created + 3600);
            let number = if status == "draft" {
                "null".to_owned()
            } else {
                format!(
                    "\"{}-{:04}\"",
                    draw.ids.random(8).to_uppercase(),
                    draw.rng.gen_range(1..10_000)
                )
            };
            write!(
                out,
                r#"{{"id":"{id}","object":"invoice","account_country":"US","account_name":"Sandbox","amount_due":{amount},"amount_paid":{amount_paid},"amount_remaining":{remaining},"attempt_count":{attempts},"attempted":{attempted},"auto_advance":{auto_advance},"billing_reason":"subscription_cycle","collection_method":"charge_automatically","created":{created},"currency":"usd","customer":"{customer}","customer_email":null,"description":null,"due_date":null,"hosted_invoice_url":null,"lines":{{"object":"list","data":[],"has_more":false,"total_count":0,"url":"/v1/invoices/{id}/lines"}},"livemode":false,"metadata":{{}},"number":{number},"paid":{paid},"period_end":{created},"period_start":{period_start},"status":"{status}","status_transitions":{{"finalized_at":{finalized},"marked_uncollectible_at":{uncollectible},"paid_at":{paid_at},"voided_at":{voided}}},"subscription":"{subscription}","subtotal":{amount},"total":{amount}}}"#,
                amount_paid = if paid { amount } else { 0 },
                remaining = if paid { 0 } else { amount },
                attempts = u8::from(finalized.is_some()),
                attempted = finalized.is_some(),
                auto_advance = matches!(status, "draft" | "open"),
                customer = refs.get(ObjectType::Customers),
                period_start = created - MONTH_SECS,
                finalized = opt_num(finalized),
                uncollectible = opt_num((status == "uncollectible").then_some(created + 86_400)),
                paid_at = opt_num(paid.then_some(created + 3600)),
                voided = opt_num((status == "void").then_some(created + 86_400)),
                subscription = refs.get(ObjectType::Subscriptions),
            )
        }
        ObjectType::PaymentIntents => {
            let status = draw.pick(&[
                ("requires_payment_method", 10),
                ("succeeded", 70),
                ("canceled", 10),
                ("processing", 5),
                ("requires_action", 5),
            ]);
            let amount = draw.amount();
            let succeeded = status == "succeeded";
            let canceled = status == "canceled";
            let latest_charge = if succeeded {
                format!("\"{}\"", draw.ids.next("ch"))
            } else {
                "null".to_owned()
            };
            let payment_method = if status == "requires_payment_method" {
                "null".to_owned()
            } else {
                format!("\"{}\"", draw.ids.next("pm"))
            };
            write!(
                out,
                r#"{{"id":"{id}","object":"payment_intent","amount":{amount},"amount_capturable":0,"amount_received":{received},"application":null,"canceled_at":{canceled_at},"cancellation_reason":{reason},"capture_method":"automatic","client_secret":"{id}_secret_{secret}","confirmation_method":"automatic","created":{created},"currency":"usd","customer":"{customer}","description":null,"last_payment_error":null,"latest_charge":{latest_charge},"livemode":false,"metadata":{{}},"payment_method":{payment_method},"payment_method_types":["card"],"status":"{status}"}}"#,
                received = if succeeded { amount } else { 0 },
                canceled_at = opt_num(canceled.then_some(created + 600)),
                reason = if canceled { "\"abandoned\"" } else { "null" },
                secret = draw.ids.random(24),
                customer = refs.get(ObjectType::Customers),
            )
        }
        ObjectType::Charges => {
            let status = draw.pick(&[("succeeded", 90), ("failed", 10)]);
            let ok = status == "succeeded";
            let amount = draw.amount();
            let (network, outcome, message, failure_code, failure_message) = if ok {
                (
                    "approved_by_network",
                    "authorized",
                    "Payment complete.",
                    "null",
                    "null",
                )
            } else {
                (
                    "declined_by_network",
                    "issuer_declined",
                    "The bank did not return any further details with this decline.",
                    "\"card_declined\"",
                    "\"Your card was declined.\"",
                )
            };
            write!(
                out,
                r#"{{"id":"{id}","object":"charge","amount":{amount},"amount_captured":{captured},"amount_refunded":0,"application_fee":null,"balance_transaction":{txn},"billing_details":{{"address":null,"email":null,"name":null,"phone":null}},"captured":{ok},"created":{created},"currency":"usd","customer":"{customer}","description":null,"disputed":false,"failure_code":{failure_code},"failure_message":{failure_message},"livemode":false,"metadata":{{}},"outcome":{{"network_status":"{network}","reason":null,"risk_level":"normal","seller_message":"{message}","type":"{outcome}"}},"paid":{ok},"payment_intent":"{pi}","payment_method":"{pm}","receipt_url":null,"refunded":false,"status":"{status}"}}"#,
                captured = if ok { amount } else { 0 },
                txn = if ok {
                    format!("\"{}\"", draw.ids.next("txn"))
                } else {
                    "null".to_owned()
                },
                customer = refs.get(ObjectType::Customers),
                pi = refs.get(ObjectType::PaymentIntents),
                pm = draw.ids.next("pm"),
            )
        }
        ObjectType::Refunds => {
            let status = draw.pick(&[("succeeded", 90), ("pending", 10)]);
            let reason = draw.pick(&[("requested_by_customer", 3), ("duplicate", 1)]);
            write!(
                out,
                r#"{{"id":"{id}","object":"refund","amount":{amount},"balance_transaction":"{txn}","charge":"{charge}","created":{created},"currency":"usd","metadata":{{}},"payment_intent":"{pi}","reason":"{reason}","receipt_number":null,"source_transfer_reversal":null,"status":"{status}","transfer_reversal":null}}"#,
                amount = draw.amount(),
                txn = draw.ids.next("txn"),
                charge = refs.get(ObjectType::Charges),
                pi = refs.get(ObjectType::PaymentIntents),
            )
        }
        ObjectType::Disputes => {
            let status = draw.pick(&[
                ("needs_response", 30),
                ("under_review", 20),
                ("won", 30),
                ("lost", 20),
            ]);
            let reason = draw.pick(&[
                ("fraudulent", 3),
                ("product_not_received", 1),
                ("duplicate", 1),
            ]);
            write!(
                out,
                r#"{{"id":"{id}","object":"dispute","amount":{amount},"balance_transactions":[],"charge":"{charge}","created":{created},"currency":"usd","evidence_details":{{"due_by":{due_by},"has_evidence":false,"past_due":false,"submission_count":0}},"is_charge_refundable":false,"livemode":false,"metadata":{{}},"payment_intent":"{pi}","reason":"{reason}","status":"{status}"}}"#,
                amount = draw.amount(),
                charge = refs.get(ObjectType::Charges),
                due_by = created + 21 * 86_400,
                pi = refs.get(ObjectType::PaymentIntents),
            )
        }
        ObjectType::Payouts => {
            let status = draw.pick(&[("pending", 10), ("paid", 80), ("in_transit", 10)]);
            write!(
                out,
                r#"{{"id":"{id}","object":"payout","amount":{amount},"arrival_date":{arrival},"automatic":true,"balance_transaction":"{txn}","created":{created},"currency":"usd","description":"STRIPE PAYOUT","destination":"{bank}","failure_balance_transaction":null,"failure_code":null,"failure_message":null,"livemode":false,"metadata":{{}},"method":"standard","source_type":"card","statement_descriptor":null,"status":"{status}","type":"bank_account"}}"#,
                amount = draw.amount() * 10,
                arrival = created + 2 * 86_400,
                txn = draw.ids.next("txn"),
                bank = draw.ids.next("ba"),
            )
        }
    };
    out.shrink_to_fit();
    out
}

fn patch(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The next change of `object` for `mutate`: its lifecycle's next step when it has one,
/// else a field edit. `rev` makes each edit's value new.
pub(super) fn mutation(
    object_type: ObjectType,
    object: &Map<String, Value>,
    now: i64,
    rng: &mut ChaCha8Rng,
    rev: u64,
) -> Map<String, Value> {
    let status = object.get("status").and_then(Value::as_str).unwrap_or("");
    let amount = object.get("amount").cloned().unwrap_or(Value::from(0));
    let metadata = json!({"metadata": {"sandbox_rev": rev.to_string()}});
    let step = rng.gen_bool(0.7);
    patch(match (object_type, status) {
        (ObjectType::Products, _) => match rng.gen_range(0..3) {
            0 => {
                json!({"name": format!("{} v{rev}", PRODUCT_NAMES[rng.gen_range(0..PRODUCT_NAMES.len())]), "updated": now})
            }
            1 => json!({"description": format!("Revision {rev}"), "updated": now}),
            _ => json!({"metadata": {"sandbox_rev": rev.to_string()}, "updated": now}),
        },
        (ObjectType::Prices, _) if step => json!({"nickname": format!("Tier {rev}")}),
        (ObjectType::Customers, _) if step => {
            json!({"email": format!("customer{rev}@example.com"), "balance": rng.gen_range(-5000..5000)})
        }
        (ObjectType::Subscriptions, "trialing" | "incomplete" | "past_due") if step => {
            json!({"status": "active"})
        }
        (ObjectType::Subscriptions, "active") if step => {
            if rng.gen_bool(0.3) {
                json!({"status": "past_due"})
            } else {
                json!({"cancel_at_period_end": !object.get("cancel_at_period_end").and_then(Value::as_bool).unwrap_or(false)})
            }
        }
        (ObjectType::Invoices, "draft") if step => json!({
            "status": "open", "number": format!("SBX-{rev:06}"), "attempted": true, "attempt_count": 1,
            "status_transitions": {"finalized_at": now, "marked_uncollectible_at": null, "paid_at": null, "voided_at": null}
        }),
        (ObjectType::Invoices, "open") if step => json!({
            "status": "paid", "paid": true, "amount_paid": object.get("amount_due").cloned().unwrap_or(Value::from(0)),
            "amount_remaining": 0, "auto_advance": false,
            "status_transitions": {"finalized_at": object.get("created").cloned().unwrap_or(Value::Null), "marked_uncollectible_at": null, "paid_at": now, "voided_at": null}
        }),
        (ObjectType::PaymentIntents, "requires_payment_method") if step => {
            json!({"status": "requires_action", "payment_method": format!("pm_sandbox{rev}")})
        }
        (ObjectType::PaymentIntents, "requires_action") if step => json!({"status": "processing"}),
        (ObjectType::PaymentIntents, "processing") if step => {
            json!({"status": "succeeded", "amount_received": amount})
        }
        (ObjectType::Charges, "succeeded")
            if step && object.get("refunded").and_then(Value::as_bool) == Some(false) =>
        {
            json!({"refunded": true, "amount_refunded": amount})
        }
        (ObjectType::Refunds, "pending") if step => json!({"status": "succeeded"}),
        (ObjectType::Disputes, "needs_response") if step => {
            json!({"status": "under_review", "evidence_details": {"due_by": now + 86_400, "has_evidence": true, "past_due": false, "submission_count": 1}})
        }
        (ObjectType::Disputes, "under_review") if step => {
            json!({"status": if rng.gen_bool(0.5) { "won" } else { "lost" }})
        }
        (ObjectType::Payouts, "pending") if step => json!({"status": "in_transit"}),
        (ObjectType::Payouts, "in_transit") if step => json!({"status": "paid"}),
        _ => metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_rendering_is_valid_json_with_its_id_object_and_created() {
        let mut ids = IdMaker::new(ChaCha8Rng::seed_from_u64(1));
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for flavor in [Flavor::History, Flavor::New] {
            for object_type in ObjectType::ALL {
                let mut refs = Refs::default();
                for needed in Refs::needed(object_type) {
                    refs.set(*needed, ids.next(super::super::objects::prefix(*needed)));
                }
                for _ in 0..50 {
                    let mut draw = Draw {
                        ids: &mut ids,
                        rng: &mut rng,
                        now: 1_700_000_000,
                        flavor,
                    };
                    let text = render(object_type, "x_1", 1_690_000_000, &refs, &mut draw);
                    let value: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("{object_type}: {e}: {text}"));
                    assert_eq!(value["id"], "x_1");
                    assert_eq!(value["object"], object_type.object_name());
                    assert_eq!(value["created"], 1_690_000_000);
                }
            }
        }
    }

    #[test]
    fn mutations_walk_lifecycles() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut invoice = patch(json!({"status": "draft", "amount_due": 500, "created": 1}));
        for _ in 0..50 {
            let change = mutation(ObjectType::Invoices, &invoice, 10, &mut rng, 1);
            super::super::objects::merge(&mut invoice, change);
        }
        assert_eq!(invoice["status"], "paid");
        assert_eq!(invoice["amount_paid"], 500);
    }
}
