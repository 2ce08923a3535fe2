//! Stripe's parameter encoding: `application/x-www-form-urlencoded` pairs (bodies and
//! query strings alike) whose keys nest with brackets: `metadata[plan]=pro` is an
//! object, `types[]=a` and `types[0]=a` arrays, `created[gte]=1` a range. [`parse`]
//! turns them into one JSON object of strings, and the typed readers below turn leaves
//! into what an endpoint expects, refusing like Stripe does (`Invalid integer: x`).
//!
//! Hand-written rather than a dependency: it is a few dozen lines, and Stripe's
//! bracket rules are not serde_urlencoded's.

use serde_json::{Map, Value};

use super::errors::ApiError;

/// Decodes one form component: `+` is a space, `%XX` a byte; invalid UTF-8 and broken
/// escapes are kept as they are rather than refused.
fn decode(raw: &str) -> String {
    fn hex(byte: u8) -> Option<u8> {
        char::from(byte)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            ) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The decoded `key=value` pairs of a form or query string, in order.
pub(super) fn pairs(input: &str) -> Vec<(String, String)> {
    input
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| match part.split_once('=') {
            Some((key, value)) => (decode(key), decode(value)),
            None => (decode(part), String::new()),
        })
        .collect()
}

/// `a[b][]` → `["a", "b", ""]`; a key whose brackets do not close is one plain name.
fn segments(key: &str) -> Vec<&str> {
    let Some(open) = key.find('[') else {
        return vec![key];
    };
    let mut out = vec![&key[..open]];
    let mut rest = &key[open..];
    while let Some(inner) = rest.strip_prefix('[') {
        let Some(close) = inner.find(']') else {
            return vec![key];
        };
        out.push(&inner[..close]);
        rest = &inner[close + 1..];
    }
    if rest.is_empty() {
        out
    } else {
        vec![key]
    }
}

fn insert(target: &mut Value, path: &[&str], value: String) -> Result<(), ()> {
    let Some((first, rest)) = path.split_first() else {
        return match target {
            Value::Null => {
                *target = Value::String(value);
                Ok(())
            }
            _ => Err(()),
        };
    };
    if first.is_empty() || first.bytes().all(|b| b.is_ascii_digit()) {
        if target.is_null() {
            *target = Value::Array(Vec::new());
        }
        let Value::Array(items) = target else {
            return Err(());
        };
        // `[]` appends; `[n]` addresses item n, or appends when n is the next index
        // (or beyond: Stripe's libraries always number from 0 without gaps).
        let slot = match first.parse::<usize>() {
            Ok(n) if n < items.len() => n,
            _ => {
                items.push(Value::Null);
                items.len() - 1
            }
        };
        return insert(&mut items[slot], rest, value);
    }
    if target.is_null() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(fields) = target else {
        return Err(());
    };
    insert(
        fields.entry((*first).to_owned()).or_insert(Value::Null),
        rest,
        value,
    )
}

/// Parses a form or query string into nested JSON (every leaf a string). A key given
/// twice, or as both a value and a nest, is refused naming it.
pub(super) fn parse(input: &str) -> Result<Map<String, Value>, ApiError> {
    let mut root = Value::Object(Map::new());
    for (key, value) in pairs(input) {
        let path = segments(&key);
        if path[0].is_empty() {
            return Err(ApiError::invalid(format!("Invalid parameter name: {key}")).param(key));
        }
        insert(&mut root, &path, value).map_err(|()| {
            ApiError::invalid(format!("Invalid value for {key}: it was given more than once or conflicts with another parameter")).param(key.clone())
        })?;
    }
    match root {
        Value::Object(map) => Ok(map),
        _ => Ok(Map::new()),
    }
}

/// Refuses every top-level parameter not in `allowed`.
pub(super) fn only(params: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    match params.keys().find(|key| !allowed.contains(&key.as_str())) {
        Some(key) => Err(ApiError::unknown_parameter(key)),
        None => Ok(()),
    }
}

/// Refuses every key of the nested parameter `name` not in `allowed`.
pub(super) fn only_nested(value: &Value, name: &str, allowed: &[&str]) -> Result<(), ApiError> {
    match value {
        Value::Object(fields) => match fields.keys().find(|key| !allowed.contains(&key.as_str())) {
            Some(key) => Err(ApiError::unknown_parameter(&format!("{name}[{key}]"))),
            None => Ok(()),
        },
        _ => Err(ApiError::invalid(format!("Invalid object: {name} must be a hash")).param(name)),
    }
}

/// A string parameter.
pub(super) fn string<'a>(value: &'a Value, param: &str) -> Result<&'a str, ApiError> {
    value.as_str().ok_or_else(|| {
        ApiError::invalid(format!("Invalid string: {param} must be a string")).param(param)
    })
}

/// An integer parameter.
pub(super) fn integer(value: &Value, param: &str) -> Result<i64, ApiError> {
    let text = string(value, param)?;
    text.trim()
        .parse()
        .map_err(|_| ApiError::invalid_integer(param, format!("Invalid integer: {text}")))
}

/// A boolean parameter (`true` / `false`).
pub(super) fn boolean(value: &Value, param: &str) -> Result<bool, ApiError> {
    match string(value, param)? {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(ApiError::invalid(format!("Invalid boolean: {other}")).param(param)),
    }
}

/// A string parameter where `""` means "unset" (`null`), as in Stripe's updates.
pub(super) fn nullable_string(value: &Value, param: &str) -> Result<Value, ApiError> {
    Ok(match string(value, param)? {
        "" => Value::Null,
        text => Value::String(text.to_owned()),
    })
}

/// A list of strings (`images[]`, `types[0]`…).
pub(super) fn strings(value: &Value, param: &str) -> Result<Vec<String>, ApiError> {
    match value {
        Value::Array(items) => items
            .iter()
            .map(|item| string(item, param).map(str::to_owned))
            .collect(),
        Value::String(empty) if empty.is_empty() => Ok(Vec::new()),
        _ => {
            Err(ApiError::invalid(format!("Invalid array: {param} must be an array")).param(param))
        }
    }
}

/// Most metadata keys an object takes, and their lengths (Stripe's limits).
const METADATA_KEYS: usize = 50;
const METADATA_KEY_CHARS: usize = 40;
const METADATA_VALUE_CHARS: usize = 500;

/// The metadata after applying `given` to `current`: each key set, `""` removing it,
/// and `metadata=""` clearing them all.
pub(super) fn metadata(current: Option<&Value>, given: &Value) -> Result<Value, ApiError> {
    let mut result = match current {
        Some(Value::Object(fields)) => fields.clone(),
        _ => Map::new(),
    };
    match given {
        Value::String(empty) if empty.is_empty() => return Ok(Value::Object(Map::new())),
        Value::Object(fields) => {
            for (key, value) in fields {
                let param = format!("metadata[{key}]");
                let value = string(value, &param)?;
                if key.chars().count() > METADATA_KEY_CHARS {
                    return Err(ApiError::invalid(format!(
                        "Metadata keys can have up to {METADATA_KEY_CHARS} characters"
                    ))
                    .param(param));
                }
                if value.chars().count() > METADATA_VALUE_CHARS {
                    return Err(ApiError::invalid(format!(
                        "Metadata values can have up to {METADATA_VALUE_CHARS} characters"
                    ))
                    .param(param));
                }
                if value.is_empty() {
                    result.remove(key);
                } else {
                    result.insert(key.clone(), Value::String(value.to_owned()));
                }
            }
        }
        _ => {
            return Err(ApiError::invalid("Invalid hash: metadata must be a hash").param("metadata"))
        }
    }
    if result.len() > METADATA_KEYS {
        return Err(
            ApiError::invalid(format!("Metadata can have up to {METADATA_KEYS} keys"))
                .param("metadata"),
        );
    }
    Ok(Value::Object(result))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn brackets_nest_and_escapes_decode() {
        let parsed = parse(
            "name=Pro+plan%21&metadata[tier]=gold&recurring%5Binterval%5D=month&types[]=a&types[]=b&ids[0]=x&ids[1]=y&bad=%zz",
        )
        .unwrap();
        assert_eq!(
            Value::Object(parsed),
            json!({
                "name": "Pro plan!",
                "metadata": {"tier": "gold"},
                "recurring": {"interval": "month"},
                "types": ["a", "b"],
                "ids": ["x", "y"],
                "bad": "%zz"
            })
        );
    }

    #[test]
    fn repeats_and_conflicts_are_refused() {
        assert!(parse("name=a&name=b").is_err());
        assert!(parse("metadata=x&metadata[a]=b").is_err());
        assert!(parse("[x]=1").is_err());
        assert_eq!(parse("").unwrap(), Map::new());
    }

    #[test]
    fn typed_readers_refuse_like_stripe() {
        let err = integer(&json!("ten"), "limit").unwrap_err();
        assert!(err.to_string().contains("Invalid integer: ten"));
        assert!(boolean(&json!("yes"), "active").is_err());
        assert!(!boolean(&json!("false"), "active").unwrap());
        let current = json!({"a": "1", "b": "2"});
        assert_eq!(
            metadata(Some(&current), &json!({"a": "", "c": "3"})).unwrap(),
            json!({"b": "2", "c": "3"})
        );
        assert_eq!(metadata(Some(&current), &json!("")).unwrap(), json!({}));
    }
}
