//! One rule for what callers send, checked over HTTP on the running server: unknown
//! query parameters, unknown JSON fields, foreign or malformed page tokens and values
//! out of bounds are all `400` with a JSON error whose message starts with the name
//! of the parameter or field, in acctor's words (never a deserializer's, never 422).
//! The unknown-parameter case is walked over every operation `/openapi.json` lists,
//! so a route added later without the rule fails here.

use serde_json::{json, Value};

use crate::helpers::{spawn_env, urlencode, TestEnv};

/// Words that only a deserializer would write.
const DESERIALIZER_WORDS: &[&str] = &[
    "invalid digit",
    "Failed to deserialize",
    "unknown field `",
    "expected one of",
    "invalid type",
    "missing field",
    "at line",
];

async fn send(env: &TestEnv, method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    let method =
        reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("method");
    let mut request = env.client.request(method, url);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
    (status, body)
}

/// Asserts a 400 whose message starts with `name: ` and is in acctor's words.
fn assert_refused(what: &str, (status, body): &(u16, Value), name: &str) -> String {
    assert_eq!(*status, 400, "{what}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        body["error"]["code"].is_string(),
        "{what}: no error code: {body}"
    );
    assert!(
        message.starts_with(&format!("{name}: ")),
        "{what}: the message should name {name}: {message:?}"
    );
    for words in DESERIALIZER_WORDS {
        assert!(
            !message.contains(words),
            "{what}: deserializer text in {message:?}"
        );
    }
    message.to_string()
}

async fn linked_account(env: &TestEnv) -> String {
    let (account, _item) = env.linked_item(3).await;
    account
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_token_the_endpoint_did_not_issue_is_refused_on_every_paged_endpoint() {
    let env = spawn_env().await;
    let account = linked_account(&env).await;
    let paged = [
        format!("{}/v1/accounts", env.app_url),
        format!("{}/v1/accounts/{account}/transactions", env.app_url),
        format!("{}/v1/incidents", env.app_url),
        format!("{}/debug/actors", env.app_url),
    ];
    // Garbage, and a token of another endpoint (an incident id, an account id, a
    // transaction position) where it does not belong.
    let foreign = [
        (0, "12"),
        (1, account.as_str()),
        (2, account.as_str()),
        (3, "2024-01-01|txn_1"),
    ];
    for url in &paged {
        let refused = send(&env, "GET", &format!("{url}?after=garbage"), None).await;
        let message = assert_refused(&format!("{url}?after=garbage"), &refused, "after");
        assert_eq!(message, "after: not a page token returned by this endpoint");
    }
    for (at, token) in foreign {
        let url = format!("{}?after={}", paged[at], urlencode(token));
        assert_refused(&url, &send(&env, "GET", &url, None).await, "after");
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokens_the_server_issues_page_through_every_account() {
    let env = spawn_env().await;
    let mut linked = Vec::new();
    for _ in 0..3 {
        linked.push(linked_account(&env).await);
    }
    linked.sort();
    for listing in ["/v1/accounts", "/debug/actors"] {
        let (field, id) = if listing == "/v1/accounts" {
            ("accounts", "id")
        } else {
            ("actors", "account_id")
        };
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut url = format!("{}{listing}?limit=1", env.app_url);
            if let Some(token) = &after {
                url.push_str(&format!("&after={}", urlencode(token)));
            }
            let page = env.get_json(&url).await;
            for entry in page[field].as_array().expect("entries") {
                seen.push(entry[id].as_str().expect("id").to_string());
            }
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_string()),
                None => break,
            }
        }
        assert_eq!(seen, linked, "{listing}");
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_values_are_400_naming_the_parameter() {
    let env = spawn_env().await;
    let account = linked_account(&env).await;
    let app = &env.app_url;
    let cases = [
        (
            "POST",
            format!("{app}/v1/accounts/{account}/sync?force=maybe"),
            "force",
        ),
        // Deleting is its own verb now: a `purge` flag is not a parameter any more.
        (
            "DELETE",
            format!("{app}/v1/accounts/{account}?purge=true"),
            "purge",
        ),
        ("GET", format!("{app}/v1/accounts?limit=0"), "limit"),
        ("GET", format!("{app}/v1/accounts?limit=1001"), "limit"),
        ("GET", format!("{app}/v1/accounts?limit=ten"), "limit"),
        (
            "GET",
            format!("{app}/v1/accounts/{account}/transactions?limit=-1"),
            "limit",
        ),
        (
            "GET",
            format!("{app}/v1/accounts/{account}/transactions?start_date=2024-13-01"),
            "start_date",
        ),
        (
            "GET",
            format!("{app}/v1/incidents?limit=99999999999999999999999"),
            "limit",
        ),
        ("GET", format!("{app}/v1/incidents?state=closed"), "state"),
        ("GET", format!("{app}/debug/actors?limit=501"), "limit"),
        ("GET", format!("{app}/debug/actors?sort=size"), "sort"),
        (
            "GET",
            format!("{app}/debug/actors?provider=mybank"),
            "provider",
        ),
        ("GET", format!("{app}/v1/accounts?limit=5&limit=6"), "limit"),
    ];
    for (method, url, name) in cases {
        assert_refused(
            &format!("{method} {url}"),
            &send(&env, method, &url, None).await,
            name,
        );
    }
    let (_, body) = send(&env, "GET", &format!("{app}/debug/actors?limit=501"), None).await;
    assert_eq!(
        body["error"]["message"],
        "limit: must be an integer from 1 to 500"
    );
    let (_, body) = send(
        &env,
        "DELETE",
        &format!("{app}/v1/accounts/{account}?purge=true"),
        None,
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("purge: not a parameter of this endpoint")),
        "{body}"
    );
    // The refused requests changed nothing: the account is still linked.
    let still = env.get_json(&format!("{app}/v1/accounts/{account}")).await;
    assert_eq!(still["status"], "linked");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_json_fields_and_wrong_types_are_400_naming_the_field() {
    let env = spawn_env().await;
    let url = format!("{}/v1/accounts", env.app_url);
    let good = json!({
        "provider": "plaid", "item_id": "item-1", "access_token": "token-1", "owner_id": "u1"
    });
    let mut unknown = good.clone();
    unknown["color"] = json!("red");
    let message = assert_refused(
        "unknown field",
        &send(&env, "POST", &url, Some(unknown)).await,
        "color",
    );
    assert!(message.contains("not a field of this body"), "{message}");
    let missing = json!({ "provider": "plaid" });
    assert_refused(
        "missing field",
        &send(&env, "POST", &url, Some(missing)).await,
        "item_id",
    );
    let mut wrong_type = good.clone();
    wrong_type["owner_id"] = json!(42);
    assert_refused(
        "wrong type",
        &send(&env, "POST", &url, Some(wrong_type)).await,
        "owner_id",
    );
    let mut wrong_item = good.clone();
    wrong_item["aliases"] = json!(["a", 7]);
    assert_refused(
        "wrong item",
        &send(&env, "POST", &url, Some(wrong_item)).await,
        "aliases[1]",
    );
    assert_refused(
        "not an object",
        &send(&env, "POST", &url, Some(json!([1]))).await,
        "body",
    );
    let (status, body) = send(&env, "POST", &url, Some(json!("{not json"))).await;
    assert_eq!(status, 400, "{body}");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_refuses_an_unknown_query_parameter() {
    let env = spawn_env().await;
    let account = linked_account(&env).await;
    let spec = env.get_json(&format!("{}/openapi.json", env.app_url)).await;
    let mut walked = 0;
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            let concrete = path
                .replace("{key}", &account)
                .replace("{provider}", "plaid")
                .replace("{id}", "1");
            let url = format!("{}{concrete}?color=red", env.app_url);
            let body = (method == "post" && path == "/v1/accounts").then(|| {
                json!({ "provider": "plaid", "item_id": "i", "access_token": "t", "owner_id": "o" })
            });
            let what = format!("{method} {path}");
            let message = assert_refused(&what, &send(&env, method, &url, body).await, "color");
            assert!(
                message.contains("not a parameter of this endpoint"),
                "{what}: {message}"
            );
            // And the document says so: every operation documents its 400.
            assert!(
                operation["responses"]["400"].is_object(),
                "{what} does not document its 400"
            );
            walked += 1;
        }
    }
    assert!(walked >= 20, "only {walked} operations walked");
    // Nothing was linked by the refused POST.
    let list = env.get_json(&format!("{}/v1/accounts", env.app_url)).await;
    assert_eq!(list["accounts"].as_array().map(Vec::len), Some(1));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_states_what_is_accepted() {
    let env = spawn_env().await;
    let spec = env.get_json(&format!("{}/openapi.json", env.app_url)).await;
    // One shape per provider: a Plaid link takes no Stripe setting, a Stripe link
    // needs its endpoint secrets, and both refuse anything they do not list.
    let branches = spec["components"]["schemas"]["LinkRequest"]["oneOf"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(branches.len(), 2, "{branches:?}");
    let (plaid, stripe) = (&branches[0], &branches[1]);
    for link in [plaid, stripe] {
        assert_eq!(link["additionalProperties"], false, "{link}");
        assert!(link["properties"]["item_id"]["pattern"].is_string());
        assert_eq!(link["properties"]["aliases"]["maxItems"], 16);
    }
    assert_eq!(plaid["properties"]["provider"]["enum"], json!(["plaid"]));
    assert!(plaid["properties"]["webhook_secrets"].is_null());
    assert_eq!(stripe["properties"]["provider"]["enum"], json!(["stripe"]));
    assert!(stripe["required"]
        .as_array()
        .is_some_and(|r| r.contains(&json!("webhook_secrets"))));
    assert_eq!(stripe["properties"]["webhook_secrets"]["maxItems"], 2);
    assert_eq!(stripe["properties"]["object_types"]["uniqueItems"], true);
    let params = |path: &str, method: &str| -> Vec<Value> {
        spec["paths"][path][method]["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let find = |list: &[Value], name: &str| -> Value {
        list.iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no parameter {name} in {list:?}"))
    };
    let actors = params("/debug/actors", "get");
    assert_eq!(find(&actors, "limit")["schema"]["maximum"], 500.0);
    assert_eq!(find(&actors, "limit")["schema"]["minimum"], 1.0);
    assert_eq!(
        find(&actors, "sort")["schema"]["enum"],
        json!(["id", "lag", "last_error"])
    );
    assert!(find(&actors, "after")["schema"]["pattern"].is_string());
    let incidents = params("/v1/incidents", "get");
    assert!(find(&incidents, "kind")["schema"]["enum"].is_array());
    assert_eq!(
        find(&incidents, "state")["schema"]["enum"],
        json!(["open", "resolved", "all"])
    );
    let kinds = find(&incidents, "kind")["schema"]["enum"].clone();
    assert!(
        kinds
            .as_array()
            .is_some_and(|k| k.contains(&json!("account_opening_webhook_not_received"))),
        "{kinds}"
    );
    assert_eq!(
        find(&incidents, "operation_id")["schema"]["pattern"],
        "^op_[0-9a-f]{32}$"
    );
    let key = find(&params("/v1/accounts/{key}", "get"), "key");
    assert_eq!(key["schema"]["maxLength"], 256);
    // A stateful client can walk from a link or a listing to the account routes.
    let created = &spec["paths"]["/v1/accounts"]["post"]["responses"]["201"]["links"];
    for target in [
        "get_account",
        "list_transactions",
        "get_sync_status",
        "request_sync",
        "unlink_account",
        "delete_account",
    ] {
        assert_eq!(created[target]["operationId"], target, "{created}");
        assert_eq!(created[target]["parameters"]["key"], "$response.body#/id");
    }
    // The headers the error answers carry are documented where they are sent.
    let unlink = &spec["paths"]["/v1/accounts/{key}"]["delete"]["responses"];
    assert!(
        unlink["503"]["headers"]["Retry-After"].is_object(),
        "{unlink}"
    );
    assert!(
        unlink["401"]["headers"]["WWW-Authenticate"].is_object(),
        "{unlink}"
    );
    let webhook = &spec["paths"]["/webhooks/{provider}"]["post"]["responses"];
    assert!(webhook["401"]["headers"].is_null(), "{webhook}");
    let listed = &spec["paths"]["/v1/incidents"]["get"]["responses"]["200"]["links"];
    assert_eq!(listed["first_get_incident"]["operationId"], "get_incident");
    env.shutdown().await;
}
