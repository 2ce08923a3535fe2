//! The parameters of Stripe's list endpoints (`/v1/{type}` and `/v1/events`), read and
//! checked as Stripe does: `limit` 1..=100 (default 10), one of `starting_after` /
//! `ending_before`, `created` as an exact second or a `gt`/`gte`/`lt`/`lte` range, the
//! type's own filters, and a 400 naming any other parameter. `expand` is accepted and
//! ignored (the sandbox never expands).
//!
//! `/v1/subscriptions` without `status` lists every subscription that is not canceled,
//! as Stripe does; `status=all` lists them all (acctor's client always sends it).

use serde_json::{Map, Value};

use super::errors::ApiError;
use super::form;
use super::store::{CreatedRange, Cursor, Page};
use crate::domain::stripe::ObjectType;

/// The page size when `limit` is absent.
const DEFAULT_LIMIT: usize = 10;
/// The largest page.
const MAX_LIMIT: i64 = 100;
/// The statuses `/v1/subscriptions?status=` takes.
const SUBSCRIPTION_STATUSES: [&str; 10] = [
    "active",
    "all",
    "canceled",
    "ended",
    "incomplete",
    "incomplete_expired",
    "past_due",
    "paused",
    "trialing",
    "unpaid",
];

/// A filter over listed documents.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Filter {
    /// The field's value, as text (`true`, `usd`, `prod_…`), equals this.
    Equals(&'static str, String),
    /// The field's value is one of these.
    OneOf(&'static str, &'static [&'static str]),
    /// The field's value is none of these.
    NoneOf(&'static str, &'static [&'static str]),
    /// The event type matches one of these (a trailing `*` matches any rest).
    EventType(Vec<String>),
}

/// An owned [`Cursor`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum CursorParam {
    Start,
    After(String),
    Before(String),
}

impl CursorParam {
    /// The cursor as the store takes it.
    pub fn as_cursor(&self) -> Cursor<'_> {
        match self {
            CursorParam::Start => Cursor::Start,
            CursorParam::After(id) => Cursor::After(id),
            CursorParam::Before(id) => Cursor::Before(id),
        }
    }

    /// The parameter that carried it, and its id.
    pub fn param(&self) -> Option<(&'static str, &str)> {
        match self {
            CursorParam::Start => None,
            CursorParam::After(id) => Some(("starting_after", id)),
            CursorParam::Before(id) => Some(("ending_before", id)),
        }
    }
}

/// A list call's parameters.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct ListQuery {
    pub limit: usize,
    pub cursor: CursorParam,
    pub created: CreatedRange,
    pub filters: Vec<Filter>,
}

/// How a filter parameter's value reads.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Bool,
}

/// The filters each type's list endpoint takes (a subset of Stripe's).
fn type_filters(object_type: ObjectType) -> &'static [(&'static str, Kind)] {
    use Kind::*;
    match object_type {
        ObjectType::Products => &[("active", Bool)],
        ObjectType::Prices => &[
            ("active", Bool),
            ("product", Text),
            ("currency", Text),
            ("type", Text),
        ],
        ObjectType::Customers => &[("email", Text)],
        ObjectType::Subscriptions => &[("customer", Text)],
        ObjectType::Invoices => &[("customer", Text), ("status", Text), ("subscription", Text)],
        ObjectType::PaymentIntents => &[("customer", Text)],
        ObjectType::Charges => &[("customer", Text), ("payment_intent", Text)],
        ObjectType::Refunds | ObjectType::Disputes => &[("charge", Text), ("payment_intent", Text)],
        ObjectType::Payouts => &[("status", Text)],
    }
}

const COMMON: [&str; 5] = [
    "limit",
    "starting_after",
    "ending_before",
    "created",
    "expand",
];

fn created_range(value: &Value) -> Result<CreatedRange, ApiError> {
    if let Value::String(_) = value {
        let at = form::integer(value, "created")?;
        return Ok(CreatedRange {
            gte: Some(at),
            lte: Some(at),
        });
    }
    form::only_nested(value, "created", &["gt", "gte", "lt", "lte"])?;
    let mut range = CreatedRange::default();
    for (op, bound) in value.as_object().into_iter().flatten() {
        let at = form::integer(bound, &format!("created[{op}]"))?;
        range = match op.as_str() {
            "gt" => range.at_least(Some(at.saturating_add(1))),
            "gte" => range.at_least(Some(at)),
            "lt" => range.at_most(Some(at.saturating_sub(1))),
            _ => range.at_most(Some(at)),
        };
    }
    Ok(range)
}

fn common(params: &Map<String, Value>) -> Result<(usize, CursorParam, CreatedRange), ApiError> {
    let limit = match params.get("limit") {
        None => DEFAULT_LIMIT,
        Some(value) => {
            let limit = form::integer(value, "limit")?;
            if limit < 1 {
                return Err(ApiError::invalid_integer(
                    "limit",
                    "This value must be greater than or equal to 1.",
                ));
            }
            if limit > MAX_LIMIT {
                return Err(ApiError::invalid_integer(
                    "limit",
                    format!("This value must be less than or equal to {MAX_LIMIT}."),
                ));
            }
            // 1..=100: fits.
            usize::try_from(limit).unwrap_or(DEFAULT_LIMIT)
        }
    };
    let after = params
        .get("starting_after")
        .map(|v| form::string(v, "starting_after"))
        .transpose()?;
    let before = params
        .get("ending_before")
        .map(|v| form::string(v, "ending_before"))
        .transpose()?;
    let cursor = match (after, before) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "You may only specify one of these parameters: ending_before, starting_after.",
            ))
        }
        (Some(id), None) if !id.is_empty() => CursorParam::After(id.to_owned()),
        (None, Some(id)) if !id.is_empty() => CursorParam::Before(id.to_owned()),
        _ => CursorParam::Start,
    };
    let created = params
        .get("created")
        .map(created_range)
        .transpose()?
        .unwrap_or_default();
    Ok((limit, cursor, created))
}

/// Reads the parameters of `GET /v1/{object_type}`.
pub(super) fn object_query(
    object_type: ObjectType,
    params: &Map<String, Value>,
) -> Result<ListQuery, ApiError> {
    let own = type_filters(object_type);
    let subscriptions = object_type == ObjectType::Subscriptions;
    for key in params.keys() {
        let known = COMMON.contains(&key.as_str())
            || own.iter().any(|(name, _)| name == key)
            || (subscriptions && key == "status");
        if !known {
            return Err(ApiError::unknown_parameter(key));
        }
    }
    let (limit, cursor, created) = common(params)?;
    let mut filters = Vec::new();
    for (name, kind) in own {
        let Some(value) = params.get(*name) else {
            continue;
        };
        let text = match kind {
            Kind::Bool => form::boolean(value, name)?.to_string(),
            Kind::Text => form::string(value, name)?.to_owned(),
        };
        filters.push(Filter::Equals(name, text));
    }
    if subscriptions {
        match params
            .get("status")
            .map(|v| form::string(v, "status"))
            .transpose()?
        {
            None => filters.push(Filter::NoneOf(
                "status",
                &["canceled", "incomplete_expired"],
            )),
            Some("all") => {}
            Some("ended") => {
                filters.push(Filter::OneOf("status", &["canceled", "incomplete_expired"]))
            }
            Some(status) if SUBSCRIPTION_STATUSES.contains(&status) => {
                filters.push(Filter::Equals("status", status.to_owned()))
            }
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "Invalid status: must be one of {}; got {other}",
                    SUBSCRIPTION_STATUSES.join(", ")
                ))
                .param("status"))
            }
        }
    }
    Ok(ListQuery {
        limit,
        cursor,
        created,
        filters,
    })
}

/// Reads the parameters of `GET /v1/events`.
pub(super) fn event_query(params: &Map<String, Value>) -> Result<ListQuery, ApiError> {
    for key in params.keys() {
        if !COMMON.contains(&key.as_str())
            && !matches!(key.as_str(), "type" | "types" | "delivery_success")
        {
            return Err(ApiError::unknown_parameter(key));
        }
    }
    let (limit, cursor, created) = common(params)?;
    if let Some(value) = params.get("delivery_success") {
        // Every event counts as delivered somewhere; the filter is accepted, not applied.
        form::boolean(value, "delivery_success")?;
    }
    let mut patterns = Vec::new();
    if let Some(value) = params.get("type") {
        patterns.push(form::string(value, "type")?.to_owned());
    }
    if let Some(value) = params.get("types") {
        if !patterns.is_empty() {
            return Err(ApiError::invalid(
                "You may only specify one of these parameters: type, types.",
            ));
        }
        patterns = form::strings(value, "types")?;
    }
    let filters = if patterns.is_empty() {
        Vec::new()
    } else {
        vec![Filter::EventType(patterns)]
    };
    Ok(ListQuery {
        limit,
        cursor,
        created,
        filters,
    })
}

fn text_of(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(text) => Some(text.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        // A reference expanded into an object is compared by its id.
        Value::Object(fields) => fields.get("id").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn type_matches(kind: &str, patterns: &[String]) -> bool {
    patterns
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => kind.starts_with(prefix),
            None => kind == pattern,
        })
}

/// Whether a stored document passes `filters` (parsed only when there are some).
pub(super) fn keep(json: &str, filters: &[Filter]) -> bool {
    if filters.is_empty() {
        return true;
    }
    let Ok(Value::Object(document)) = serde_json::from_str::<Value>(json) else {
        return false;
    };
    filters.iter().all(|filter| match filter {
        Filter::Equals(field, expected) => {
            text_of(document.get(*field)).as_deref() == Some(expected)
        }
        Filter::OneOf(field, values) => {
            text_of(document.get(*field)).is_some_and(|v| values.contains(&v.as_str()))
        }
        Filter::NoneOf(field, values) => {
            !text_of(document.get(*field)).is_some_and(|v| values.contains(&v.as_str()))
        }
        Filter::EventType(patterns) => document
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|kind| type_matches(kind, patterns)),
    })
}

/// A page as Stripe's list object: `{"object":"list","url",…,"has_more","data":[…]}`,
/// written from the stored JSON texts without re-encoding them.
pub(super) fn render(url: &str, page: &Page<'_>) -> String {
    let size: usize = page.data.iter().map(|d| d.len() + 1).sum();
    let mut out = String::with_capacity(size + url.len() + 64);
    out.push_str(r#"{"object":"list","url":""#);
    out.push_str(url);
    out.push_str(r#"","has_more":"#);
    out.push_str(if page.has_more { "true" } else { "false" });
    out.push_str(r#","data":["#);
    for (i, document) in page.data.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(document);
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::stripe::form::parse;

    #[test]
    fn created_forms_normalise_to_one_inclusive_range() {
        let q = object_query(
            ObjectType::Products,
            &parse("created[gt]=10&created[lt]=20&limit=5").unwrap(),
        )
        .unwrap();
        assert_eq!(
            q.created,
            CreatedRange {
                gte: Some(11),
                lte: Some(19)
            }
        );
        assert_eq!(q.limit, 5);
        let q = object_query(ObjectType::Products, &parse("created=7").unwrap()).unwrap();
        assert_eq!(
            q.created,
            CreatedRange {
                gte: Some(7),
                lte: Some(7)
            }
        );
    }

    #[test]
    fn bad_parameters_are_refused_with_their_name() {
        for (query, param) in [
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("limit=x", "limit"),
            ("foo=1", "foo"),
            ("created[since]=1", "created[since]"),
            ("status=weird", "status"),
        ] {
            let err = object_query(ObjectType::Subscriptions, &parse(query).unwrap()).unwrap_err();
            assert!(format!("{err:?}").contains(param), "{query}: {err:?}");
        }
        assert!(object_query(
            ObjectType::Products,
            &parse("starting_after=a&ending_before=b").unwrap()
        )
        .is_err());
        assert!(event_query(&parse("types[]=a&type=b").unwrap()).is_err());
    }

    #[test]
    fn subscriptions_hide_canceled_ones_unless_asked() {
        let default = object_query(ObjectType::Subscriptions, &Map::new()).unwrap();
        assert!(keep(r#"{"status":"active"}"#, &default.filters));
        assert!(!keep(r#"{"status":"canceled"}"#, &default.filters));
        let all = object_query(ObjectType::Subscriptions, &parse("status=all").unwrap()).unwrap();
        assert!(keep(r#"{"status":"canceled"}"#, &all.filters));
        let events =
            event_query(&parse("types[0]=product.*&types[1]=price.created").unwrap()).unwrap();
        assert!(keep(r#"{"type":"product.updated"}"#, &events.filters));
        assert!(!keep(r#"{"type":"price.updated"}"#, &events.filters));
    }
}
