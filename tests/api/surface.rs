//! The HTTP surface as a whole, walked from the router axum actually serves
//! (`acctor::http::routes::list` over `acctor::http::router`, built from the running
//! app's own state): every route is in `/openapi.json`, every admin route refuses a
//! missing or wrong token, the public ones do not ask for it, and `/readyz` reports
//! each failing check. A route added anywhere without documentation, or exposed
//! without the token by accident, fails here.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use acctor::http::routes::{self, RouteEntry};
use secrecy::SecretString;
use serde_json::Value;

use crate::helpers::{spawn_env, spawn_env_with, TestEnv, CONVERGE};

/// The public operations, each written out (not derived from the code's rules, and
/// no prefixes): webhooks, health, metrics and the dashboard's static shell. Every
/// other served operation must be admin-only, and every one of these must be served,
/// so a data route added later under `/dashboard/` or anywhere else fails the walk
/// unless it is added here on purpose.
const PUBLIC: &[(&str, &str)] = &[
    ("/dashboard", "GET"),
    ("/dashboard/dashboard.css", "GET"),
    ("/dashboard/dashboard.js", "GET"),
    ("/webhooks/{provider}", "POST"),
    ("/webhooks/bank", "POST"),
    ("/webhooks/stripe", "POST"),
    ("/webhooks/stripe/{account}", "POST"),
    ("/healthz", "GET"),
    ("/readyz", "GET"),
    ("/metrics", "GET"),
];

fn expected_public(path: &str, method: &str) -> bool {
    PUBLIC
        .iter()
        .any(|(p, m)| *p == path && m.eq_ignore_ascii_case(method))
}

fn served_routes(env: &TestEnv) -> Vec<RouteEntry> {
    let state = env.state.clone().expect("app running");
    let routes = routes::list(&acctor::http::router(state)).expect("route list");
    // The walk must see the routes we know exist, or a broken listing would pass.
    let known = [
        ("/v1/accounts", "POST"),
        ("/v1/accounts/{key}", "DELETE"),
        ("/healthz", "GET"),
        ("/readyz", "GET"),
        ("/webhooks/{provider}", "POST"),
        ("/openapi.json", "GET"),
    ];
    for (path, method) in known {
        assert!(
            routes
                .iter()
                .any(|r| r.path == path && r.methods.contains(method)),
            "route listing misses {method} {path}: {routes:?}"
        );
    }
    routes
}

/// A concrete URL path for a template: parameters get harmless values.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment == "{provider}" {
                "plaid".to_string()
            } else if segment.starts_with('{') {
                "no-such-thing".to_string()
            } else {
                segment.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn methods(route: &RouteEntry) -> Vec<reqwest::Method> {
    route
        .methods
        .iter()
        .map(|m| {
            if m == "ANY" {
                reqwest::Method::GET
            } else {
                reqwest::Method::from_bytes(m.as_bytes()).expect("method")
            }
        })
        .collect()
}

async fn openapi(env: &TestEnv) -> Value {
    env.get_json(&format!("{}/openapi.json", env.app_url)).await
}

#[tokio::test]
async fn every_served_route_is_documented_in_openapi() {
    let env = spawn_env().await;
    let routes = served_routes(&env);
    let spec = openapi(&env).await;
    let paths = spec["paths"].as_object().expect("paths");

    let mut served = BTreeSet::new();
    for route in &routes {
        // OpenAPI writes a catch-all `{*rest}` as `{rest}`.
        let doc_path = route.path.replace("{*", "{");
        let item = paths
            .get(&doc_path)
            .unwrap_or_else(|| panic!("{} is served but not in /openapi.json", route.path));
        for method in &route.methods {
            if method == "ANY" {
                assert!(
                    item.as_object().is_some_and(|o| !o.is_empty()),
                    "{} has no documented operation",
                    route.path
                );
                continue;
            }
            let op = &item[method.to_ascii_lowercase()];
            assert!(
                op.is_object(),
                "{method} {} is served but not in /openapi.json",
                route.path
            );
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {} documents no responses",
                route.path
            );
            served.insert((doc_path.clone(), method.to_ascii_lowercase()));
        }
    }
    // And nothing documented that is not served (a stale document misleads as much).
    for (path, item) in paths {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "post", "put", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                assert!(
                    served.contains(&(path.clone(), method.clone()))
                        || routes.iter().any(
                            |r| r.path.replace("{*", "{") == *path && r.methods.contains("ANY")
                        ),
                    "{method} {path} is documented but not served"
                );
            }
        }
    }

    // The bearer scheme, required by default; public operations opt out.
    let scheme = &spec["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http", "{scheme}");
    assert_eq!(scheme["scheme"], "bearer", "{scheme}");
    assert_eq!(spec["security"][0]["bearer"], serde_json::json!([]));
    // The one error body, documented with its fields and used by the 401s.
    let error = &spec["components"]["schemas"]["ErrorBody"];
    assert!(error.is_object(), "ErrorBody schema missing");
    let detail = &spec["components"]["schemas"]["ErrorDetail"];
    assert!(detail["properties"]["code"].is_object(), "{detail}");
    assert!(detail["properties"]["message"].is_object(), "{detail}");
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            if expected_public(path, method) {
                assert_eq!(
                    op["security"],
                    serde_json::json!([{}]),
                    "{method} {path} is public and must say so"
                );
            } else {
                assert_eq!(
                    op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} must document its 401 error body"
                );
            }
        }
    }
    env.shutdown().await;
}

#[tokio::test]
async fn admin_routes_need_the_token_and_public_ones_do_not() {
    let env = spawn_env().await;
    let routes = served_routes(&env);
    let anonymous = reqwest::Client::new();
    let mut admin_checked = 0;
    let mut public_walked = BTreeSet::new();
    for route in &routes {
        let url = format!("{}{}", env.app_url, concrete(&route.path));
        for method in methods(route) {
            let without = anonymous
                .request(method.clone(), &url)
                .send()
                .await
                .expect("request");
            let wrong = anonymous
                .request(method.clone(), &url)
                .bearer_auth("not-the-admin-token-at-all")
                .send()
                .await
                .expect("request");
            if expected_public(&route.path, method.as_str()) {
                for response in [without, wrong] {
                    let challenged = response.headers().contains_key("www-authenticate");
                    let status = response.status();
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    assert!(
                        !challenged && body["error"]["code"] != "unauthorized",
                        "public {method} {} asked for the admin token: {status} {body}",
                        route.path
                    );
                }
                public_walked.insert((route.path.clone(), method.to_string()));
            } else {
                for (what, response) in [("no token", without), ("a wrong token", wrong)] {
                    assert_eq!(
                        response.status(),
                        401,
                        "{method} {} with {what}",
                        route.path
                    );
                    let challenge = response
                        .headers()
                        .get("www-authenticate")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    assert!(challenge.starts_with("Bearer"), "{challenge:?}");
                    let body: Value = response.json().await.expect("json error body");
                    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
                    assert!(body["error"]["message"].is_string(), "{body}");
                }
                // The right token opens it (whatever the route then answers).
                let with = env
                    .client
                    .request(method.clone(), &url)
                    .send()
                    .await
                    .expect("request");
                assert_ne!(with.status(), 401, "{method} {} with the token", route.path);
                admin_checked += 1;
            }
        }
    }
    assert!(
        admin_checked >= 9,
        "only {admin_checked} admin operations walked"
    );
    // Every pinned public operation is served (and was walked as public): the list
    // above is the exact public surface, not a superset of it.
    let pinned: BTreeSet<(String, String)> = PUBLIC
        .iter()
        .map(|(p, m)| (p.to_string(), m.to_string()))
        .collect();
    assert_eq!(public_walked, pinned, "the public operations served");

    // Default deny: a path no route serves asks for the token before saying 404, under
    // the public dashboard and webhook paths too.
    for path in [
        "/no/such/route",
        "/dashboard/no-such-file.json",
        "/webhooks/plaid/extra",
    ] {
        let unknown = format!("{}{path}", env.app_url);
        let response = anonymous.get(&unknown).send().await.expect("request");
        assert_eq!(response.status(), 401, "anonymous GET {path}");
        let response = env.client.get(&unknown).send().await.expect("request");
        assert_eq!(response.status(), 404, "admin GET {path}");
    }
    env.shutdown().await;
}

#[tokio::test]
async fn generated_admin_token_is_kept_in_the_data_dir_across_restarts() {
    let mut env = spawn_env().await;
    let path = env
        .data_dir
        .path()
        .join(acctor::http::auth::ADMIN_TOKEN_FILE);
    let stored = std::fs::read_to_string(&path).expect("token file");
    assert_eq!(stored.trim(), env.admin_token);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "token file mode {mode:o}");
    }
    let before = env.admin_token.clone();
    let old_client = env.client.clone();
    env.restart_app().await;
    assert_eq!(env.admin_token, before, "a restart must keep the token");
    let response = old_client
        .get(format!("{}/v1/accounts", env.app_url))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    env.shutdown().await;
}

#[tokio::test]
async fn configured_admin_token_is_used_and_no_file_is_written() {
    let token = "configured-admin-token-0123456789";
    let env = spawn_env_with(|s| {
        s.server.admin_token = Some(SecretString::from(token.to_string()));
    })
    .await;
    assert_eq!(env.admin_token, token);
    assert!(!env
        .data_dir
        .path()
        .join(acctor::http::auth::ADMIN_TOKEN_FILE)
        .exists());
    let response = reqwest::Client::new()
        .get(format!("{}/v1/accounts", env.app_url))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    env.shutdown().await;
}

async fn readyz(env: &TestEnv) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{}/readyz", env.app_url))
        .send()
        .await
        .expect("readyz");
    let status = response.status().as_u16();
    (status, response.json().await.expect("readyz json"))
}

#[tokio::test]
async fn readyz_fails_when_an_actor_stops_and_when_shutting_down() {
    let env = spawn_env().await;
    let (status, body) = readyz(&env).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["store"]["writable"], true, "{body}");
    let names: Vec<&str> = body["actors"]
        .as_array()
        .expect("actors")
        .iter()
        .map(|a| a["name"].as_str().expect("name"))
        .collect();
    assert!(
        names.contains(&"supervisor") && names.contains(&"sweeper"),
        "{body}"
    );

    let state = env.state.clone().expect("app running");
    let sweeper = state.readiness.actor("sweeper").expect("sweeper watched");
    sweeper.stop(None);
    // Stopping is asynchronous: poll the observable status, bounded.
    let deadline = tokio::time::Instant::now() + CONVERGE;
    let body = loop {
        let (status, body) = readyz(&env).await;
        if status == 503 {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["failed"], serde_json::json!(["actors"]), "{body}");
    let sweeper_check = body["actors"]
        .as_array()
        .expect("actors")
        .iter()
        .find(|a| a["name"] == "sweeper")
        .expect("sweeper check")
        .clone();
    assert_eq!(sweeper_check["running"], false, "{body}");

    // The flag graceful shutdown sets first.
    state.shutting_down.store(true, Ordering::SeqCst);
    let (status, body) = readyz(&env).await;
    assert_eq!(status, 503);
    assert_eq!(
        body["failed"],
        serde_json::json!(["shutdown", "actors"]),
        "{body}"
    );
    assert_eq!(body["shutting_down"], true);
    env.shutdown().await;
}
