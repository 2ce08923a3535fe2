//! The extractors every handler uses for what a caller sends — query string, JSON body,
//! path — and the one rule they share: anything the document does not describe, or a
//! value outside what it allows, is a `400` whose message is in acctor's words and
//! starts with the parameter or field it is about (`limit: must be an integer from 1
//! to 500`, `color: not a parameter of this endpoint`). A deserializer's own text
//! (`invalid digit found in string`) never reaches a caller, and nothing answers 422.
//!
//! The accepted query parameters are read from the same `IntoParams` type that
//! documents them, so the list the server enforces and the list `/openapi.json` shows
//! cannot differ. Query values arrive as text and are parsed by [`super::params`],
//! which names the parameter in every refusal.

use std::collections::HashSet;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::openapi::path::ParameterIn;
use utoipa::IntoParams;

use super::ApiError;

/// A query string checked against `T`'s documented parameters: unknown or repeated
/// parameters are refused (400) before `T` is built. `T`'s fields should be text
/// (`Option<String>`) parsed with [`super::params`], so a bad value is refused with a
/// message naming it.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

/// For endpoints that take no query parameters: any parameter is refused.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned + IntoParams,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let known: Vec<String> = T::into_params(|| Some(ParameterIn::Query))
            .into_iter()
            .map(|p| p.name)
            .collect();
        // Text pairs cannot fail to deserialize: form decoding is lossy, never strict.
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map_err(|_| ApiError::bad_request("invalid_query", "query string: not readable"))?;
        check_names(&known, pairs.iter().map(|(name, _)| name.as_str()))?;
        let Query(value) = Query::<T>::try_from_uri(&parts.uri).map_err(|_| {
            // Every name was checked above and the fields are text: only a type whose
            // fields are not text gets here, and its message cannot name the field.
            ApiError::bad_request("invalid_query", "query string: a value has the wrong type")
        })?;
        Ok(ApiQuery(value))
    }
}

/// Refuses a name `known` does not list, and a name given twice.
fn check_names<'a>(known: &[String], names: impl Iterator<Item = &'a str>) -> Result<(), ApiError> {
    let mut seen = HashSet::new();
    for name in names {
        if !known.iter().any(|k| k == name) {
            let accepted = if known.is_empty() {
                "this endpoint takes none".to_string()
            } else {
                format!("accepted: {}", known.join(", "))
            };
            return Err(ApiError::bad_request(
                "invalid_query",
                format!(
                    "{}: not a parameter of this endpoint ({accepted})",
                    shown(name)
                ),
            ));
        }
        if !seen.insert(name) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("{name}: given more than once"),
            ));
        }
    }
    Ok(())
}

/// A caller-chosen name, safe to quote in a message (bounded, no control characters).
fn shown(name: &str) -> String {
    let clean: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
    if clean.is_empty() {
        "(empty name)".to_string()
    } else {
        clean
    }
}

/// A request body built from a JSON object by hand, so every refusal names its field.
pub trait FromJson: Sized {
    /// The fields the body may have (what its schema documents; anything else is 400).
    const FIELDS: &'static [&'static str];

    /// Builds the body from its fields (already checked against [`Self::FIELDS`]).
    fn from_json(fields: &mut JsonFields) -> Result<Self, ApiError>;
}

/// A JSON body: `application/json`, valid JSON, an object, only the documented fields,
/// each of the documented type. Size limits are the router's (`413`).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: FromJson,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(request.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "body: must be sent with `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(request, state).await?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request(
                "malformed_json",
                format!(
                    "body: not valid JSON (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let Value::Object(object) = value else {
            return Err(ApiError::bad_request(
                "invalid_body",
                "body: must be a JSON object",
            ));
        };
        let mut fields = JsonFields::new(object, T::FIELDS)?;
        T::from_json(&mut fields).map(ApiJson)
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The fields of a JSON object body, taken one by one with their type checked.
#[derive(Debug)]
pub struct JsonFields {
    object: Map<String, Value>,
}

impl JsonFields {
    /// Refuses any field not in `known`.
    pub fn new(object: Map<String, Value>, known: &[&str]) -> Result<Self, ApiError> {
        if let Some(unknown) = object.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(invalid_body(
                unknown,
                format!("not a field of this body (fields: {})", known.join(", ")),
            ));
        }
        Ok(JsonFields { object })
    }

    /// A required string field.
    pub fn string(&mut self, name: &str) -> Result<String, ApiError> {
        match self.object.remove(name) {
            None => Err(invalid_body(name, "required")),
            Some(Value::String(text)) => Ok(text),
            Some(_) => Err(invalid_body(name, "must be a string")),
        }
    }

    /// An optional string field (absent: `None`; `null` is refused, as the document
    /// does not allow it: leave the field out instead).
    pub fn opt_string(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        match self.object.remove(name) {
            None => Ok(None),
            Some(Value::Null) => Err(invalid_body(
                name,
                "must be a string (leave the field out instead of null)",
            )),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(invalid_body(name, "must be a string")),
        }
    }

    /// A required boolean field.
    pub fn bool(&mut self, name: &str) -> Result<bool, ApiError> {
        match self.object.remove(name) {
            None => Err(invalid_body(name, "required")),
            Some(Value::Bool(value)) => Ok(value),
            Some(_) => Err(invalid_body(name, "must be true or false")),
        }
    }

    /// An optional boolean field (absent: `default`).
    pub fn opt_bool(&mut self, name: &str, default: bool) -> Result<bool, ApiError> {
        match self.object.remove(name) {
            None => Ok(default),
            Some(Value::Bool(value)) => Ok(value),
            Some(_) => Err(invalid_body(name, "must be true or false")),
        }
    }

    /// An optional boolean field (absent: `None`).
    pub fn opt_flag(&mut self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.object.remove(name) {
            None => Ok(None),
            Some(Value::Bool(value)) => Ok(Some(value)),
            Some(_) => Err(invalid_body(name, "must be true or false")),
        }
    }

    /// An optional non-negative integer field of at most `max` (absent: `None`).
    pub fn opt_u64(&mut self, name: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        match self.object.remove(name) {
            None => Ok(None),
            // JSON Schema's integers are mathematical: `800.0` is one.
            Some(Value::Number(n)) => match n
                .as_u64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= max as f64)
                        .map(|f| f as u64)
                })
                .filter(|v| (min..=max).contains(v))
            {
                Some(v) => Ok(Some(v)),
                None => Err(invalid_body(
                    name,
                    format!("must be an integer from {min} to {max}"),
                )),
            },
            Some(_) => Err(invalid_body(
                name,
                format!("must be an integer from {min} to {max}"),
            )),
        }
    }

    /// An optional object of string values (absent: `None`).
    pub fn opt_string_map(
        &mut self,
        name: &str,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, ApiError> {
        match self.object.remove(name) {
            None => Ok(None),
            Some(Value::Object(map)) => map
                .into_iter()
                .map(|(key, value)| match value {
                    Value::String(text) => Ok((key, text)),
                    _ => Err(invalid_body(
                        &format!("{name}.{}", shown(&key)),
                        "must be a string",
                    )),
                })
                .collect::<Result<_, _>>()
                .map(Some),
            Some(_) => Err(invalid_body(name, "must be an object of strings")),
        }
    }

    /// An optional nested object, its own fields limited to `known` (absent: `None`).
    pub fn opt_object(
        &mut self,
        name: &str,
        known: &[&str],
    ) -> Result<Option<JsonFields>, ApiError> {
        match self.object.remove(name) {
            None => Ok(None),
            Some(Value::Object(map)) => {
                if let Some(unknown) = map.keys().find(|k| !known.contains(&k.as_str())) {
                    return Err(invalid_body(
                        &format!("{name}.{}", shown(unknown)),
                        format!("not a field of {name} (fields: {})", known.join(", ")),
                    ));
                }
                Ok(Some(JsonFields { object: map }))
            }
            Some(_) => Err(invalid_body(name, "must be an object")),
        }
    }

    /// Whether the body has `name` (still to be taken).
    pub fn has(&self, name: &str) -> bool {
        self.object.contains_key(name)
    }

    /// A required array of strings.
    pub fn required_strings(&mut self, name: &str) -> Result<Vec<String>, ApiError> {
        if !self.has(name) {
            return Err(invalid_body(name, "required"));
        }
        self.strings(name)
    }

    /// An optional array of strings (absent: `None`).
    pub fn opt_strings(&mut self, name: &str) -> Result<Option<Vec<String>>, ApiError> {
        if !self.has(name) {
            return Ok(None);
        }
        self.strings(name).map(Some)
    }

    /// An optional array of strings (absent: empty).
    pub fn strings(&mut self, name: &str) -> Result<Vec<String>, ApiError> {
        match self.object.remove(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(text) => Ok(text),
                    _ => Err(invalid_body(&format!("{name}[{i}]"), "must be a string")),
                })
                .collect(),
            Some(_) => Err(invalid_body(name, "must be an array of strings")),
        }
    }
}

fn invalid_body(field: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_body", format!("{}: {message}", shown(field)))
}

/// `Path` whose refusals name the parameter in acctor's words.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(path_error(rejection)),
        }
    }
}

fn path_error(rejection: PathRejection) -> ApiError {
    use axum::extract::path::ErrorKind;
    let PathRejection::FailedToDeserializePathParams(failed) = rejection else {
        return ApiError::internal("path parameters missing from a matched route");
    };
    let message = match failed.kind() {
        ErrorKind::InvalidUtf8InPathParam { key } => {
            format!("{key}: not valid UTF-8 once percent-decoded")
        }
        ErrorKind::ParseErrorAtKey { key, .. } | ErrorKind::DeserializeError { key, .. } => {
            format!("{key}: not a valid value")
        }
        _ => "path: a parameter is not a valid value".to_string(),
    };
    ApiError::bad_request("invalid_path", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn unknown_and_repeated_query_parameters_are_named() {
        let known = names(&["after", "limit"]);
        assert!(check_names(&known, ["limit", "after"].into_iter()).is_ok());
        let unknown = check_names(&known, ["limit", "color"].into_iter()).unwrap_err();
        assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            unknown.message,
            "color: not a parameter of this endpoint (accepted: after, limit)"
        );
        let twice = check_names(&known, ["limit", "limit"].into_iter()).unwrap_err();
        assert_eq!(twice.message, "limit: given more than once");
        let none = check_names(&[], ["force"].into_iter()).unwrap_err();
        assert_eq!(
            none.message,
            "force: not a parameter of this endpoint (this endpoint takes none)"
        );
    }

    #[test]
    fn json_fields_name_what_is_wrong() {
        let object = |v: Value| match v {
            Value::Object(o) => o,
            _ => unreachable!("an object literal"),
        };
        let unknown =
            JsonFields::new(object(serde_json::json!({"a": 1, "zz": 2})), &["a"]).unwrap_err();
        assert_eq!(unknown.message, "zz: not a field of this body (fields: a)");
        let mut fields = JsonFields::new(
            object(serde_json::json!({"a": 1, "list": ["x", 2]})),
            &["a", "b", "list"],
        )
        .unwrap();
        assert_eq!(
            fields.string("a").unwrap_err().message,
            "a: must be a string"
        );
        assert_eq!(fields.string("b").unwrap_err().message, "b: required");
        assert_eq!(
            fields.strings("list").unwrap_err().message,
            "list[1]: must be a string"
        );
        assert!(fields.strings("absent").unwrap().is_empty());
    }

    #[test]
    fn json_content_types() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, v.parse().unwrap());
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/problem+json"));
        assert!(!with("text/plain"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
