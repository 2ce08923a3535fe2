//! The routes axum actually serves, read back from a built [`Router`].
//!
//! axum has no public route listing, but its `Debug` output names every path with its
//! route id and every route's method endpoints. Reading the list from the router itself
//! (rather than from a hand-kept list, or from the OpenAPI document, which is exactly
//! what must be checked) is what lets the tests catch a route that was added without
//! documentation or without the auth policy in mind. The parser is strict: if a future
//! axum changes the format, [`list`] returns an error instead of an empty list, and a
//! unit test pins the format against routes we know exist.

use std::collections::{BTreeMap, BTreeSet};

use axum::Router;

/// One served path and the methods it answers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteEntry {
    /// The path template as registered, e.g. `/v1/accounts/{key}`.
    pub path: String,
    /// Upper-case methods (`GET`, `POST`…); `ANY` for a whole service mounted at the path.
    pub methods: BTreeSet<String>,
}

/// Why the route list could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RouteListError {
    /// axum's `Debug` output did not have the expected shape.
    #[error("cannot read the route list from axum's Debug output: {0}")]
    Format(String),
}

const METHODS: [&str; 9] = [
    "get", "head", "delete", "options", "patch", "post", "put", "trace", "connect",
];

/// The routes of `router`, sorted by path. Internal routes axum adds for nesting and
/// fallbacks are left out.
pub fn list<S>(router: &Router<S>) -> Result<Vec<RouteEntry>, RouteListError> {
    let debug = format!("{router:?}");
    // Only the main path router: the fallback router holds axum's own catch-all.
    let main = debug
        .split_once("fallback_router:")
        .map(|(main, _)| main)
        .ok_or_else(|| RouteListError::Format("no fallback_router field".into()))?;
    let (routes_part, node_part) = main
        .split_once("node: Node")
        .ok_or_else(|| RouteListError::Format("no node field".into()))?;

    let paths = parse_paths(node_part)?;
    let endpoints = parse_endpoints(routes_part)?;
    let mut out = Vec::new();
    for (id, path) in paths {
        if path.contains("__private__axum") {
            continue;
        }
        let methods = endpoints
            .get(&id)
            .cloned()
            .ok_or_else(|| RouteListError::Format(format!("no endpoint for route {id}")))?;
        out.push(RouteEntry { path, methods });
    }
    out.sort();
    Ok(out)
}

/// `RouteId(3): "/v1/accounts"` pairs from the node's `paths` map.
fn parse_paths(node: &str) -> Result<BTreeMap<u32, String>, RouteListError> {
    let mut paths = BTreeMap::new();
    let mut rest = node;
    while let Some(start) = rest.find("RouteId(") {
        rest = &rest[start + "RouteId(".len()..];
        let (id, after) = rest
            .split_once(')')
            .ok_or_else(|| RouteListError::Format("unterminated RouteId".into()))?;
        let id: u32 = id
            .parse()
            .map_err(|_| RouteListError::Format(format!("bad route id {id:?}")))?;
        let after = after.trim_start_matches([':', ' ']);
        let quoted = after
            .strip_prefix('"')
            .ok_or_else(|| RouteListError::Format(format!("route {id} has no quoted path")))?;
        let end = quoted
            .find('"')
            .ok_or_else(|| RouteListError::Format("unterminated path".into()))?;
        paths.insert(id, quoted[..end].to_string());
        rest = &quoted[end..];
    }
    if paths.is_empty() {
        return Err(RouteListError::Format("no paths found".into()));
    }
    Ok(paths)
}

/// `RouteId(3): MethodRouter(MethodRouter { get: Route, head: None, … })` entries.
fn parse_endpoints(routes: &str) -> Result<BTreeMap<u32, BTreeSet<String>>, RouteListError> {
    let mut endpoints = BTreeMap::new();
    let mut rest = routes;
    while let Some(start) = rest.find("RouteId(") {
        rest = &rest[start + "RouteId(".len()..];
        let (id, after) = rest
            .split_once(')')
            .ok_or_else(|| RouteListError::Format("unterminated RouteId".into()))?;
        let id: u32 = id
            .parse()
            .map_err(|_| RouteListError::Format(format!("bad route id {id:?}")))?;
        let after = after.trim_start_matches([':', ' ']);
        // This entry's text runs to the next route id.
        let end = after.find("RouteId(").unwrap_or(after.len());
        let entry = &after[..end];
        let mut methods = BTreeSet::new();
        if entry.starts_with("MethodRouter(") {
            for method in METHODS {
                let field = format!("{method}: ");
                let Some(at) = entry.find(&field) else {
                    return Err(RouteListError::Format(format!(
                        "route {id} has no {method} field"
                    )));
                };
                if !entry[at + field.len()..].starts_with("None") {
                    methods.insert(method.to_ascii_uppercase());
                }
            }
        } else if entry.starts_with("Route(") {
            methods.insert("ANY".to_string());
        } else {
            return Err(RouteListError::Format(format!(
                "route {id} is neither a MethodRouter nor a Route"
            )));
        }
        endpoints.insert(id, methods);
        rest = &after[end..];
    }
    Ok(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};

    #[test]
    fn reads_paths_and_methods_back_from_axum() {
        let router: Router = Router::new()
            .route("/a", get(|| async {}).post(|| async {}))
            .route("/b/{id}", post(|| async {}).delete(|| async {}))
            .route_service(
                "/svc",
                tower::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(axum::response::Response::new(
                        axum::body::Body::empty(),
                    ))
                }),
            )
            .fallback(|| async {})
            .layer(axum::middleware::from_fn(
                |r: axum::extract::Request, n: axum::middleware::Next| n.run(r),
            ));
        let routes = list(&router).unwrap();
        let shown: Vec<(String, Vec<String>)> = routes
            .into_iter()
            .map(|r| (r.path, r.methods.into_iter().collect()))
            .collect();
        let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            shown,
            vec![
                ("/a".to_string(), strs(&["GET", "POST"])),
                ("/b/{id}".to_string(), strs(&["DELETE", "POST"])),
                ("/svc".to_string(), strs(&["ANY"])),
            ]
        );
    }
}
