//! The accounts API: linking, identity resolution, validation errors, unlinking.

use serde_json::{json, Value};

use crate::helpers::spawn_env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alias_item_id_and_owner_id_resolves_to_one_account() {
    let env = spawn_env().await;
    let (item, token) = env.create_item(10).await;
    let account = env
        .link(&item, &token, "user-42", &["ada@example.com", "ada-alt"])
        .await;
    let id = account["id"].as_str().expect("id");
    assert!(
        account.get("access_token").is_none(),
        "token must never be returned: {account}"
    );
    for key in [id, "ada@example.com", "ada-alt", item.as_str(), "user-42"] {
        let v = env
            .get_json(&format!("{}/v1/accounts/{key}", env.app_url))
            .await;
        assert_eq!(v["id"], id, "key {key}");
        assert!(!v.to_string().contains(&token), "token leaked via {key}");
    }
    let list = env.get_json(&format!("{}/v1/accounts", env.app_url)).await;
    assert_eq!(list["accounts"].as_array().map(|a| a.len()), Some(1));
    assert!(!list.to_string().contains(&token));
    env.shutdown().await;
}

async fn post_link(env: &crate::helpers::TestEnv, body: Value) -> (u16, Value) {
    let response = env
        .client
        .post(format!("{}/v1/accounts", env.app_url))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("send");
    (
        response.status().as_u16(),
        response.json().await.expect("json body"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_link_requests_get_clear_json_errors() {
    let env = spawn_env().await;
    let (item, token) = env.create_item(5).await;
    let good =
        json!({ "provider": "plaid", "item_id": item, "access_token": token, "owner_id": "u1" });

    let mut unknown_provider = good.clone();
    unknown_provider["provider"] = json!("mybank");
    let (status, body) = post_link(&env, unknown_provider).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("mybank"));

    let mut empty_owner = good.clone();
    empty_owner["owner_id"] = json!("");
    let (status, body) = post_link(&env, empty_owner).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_field"))
    );

    let (status, body) = post_link(&env, json!({ "provider": "plaid" })).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_body");
    assert_eq!(body["error"]["message"], "item_id: required");

    let response = env
        .client
        .post(format!("{}/v1/accounts", env.app_url))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "malformed_json");

    let (status, first) = post_link(&env, good.clone()).await;
    assert_eq!(status, 201);
    // The same item linked again by its owner is a relink (new token), not a new account.
    let (status, again) = post_link(&env, good.clone()).await;
    assert_eq!((status, &again["id"]), (200, &first["id"]), "{again}");
    // By someone else, it is a conflict.
    let mut other_owner = good;
    other_owner["owner_id"] = json!("u2");
    let (status, body) = post_link(&env, other_owner).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict"))
    );

    let response = env
        .client
        .get(format!("{}/v1/accounts/nobody", env.app_url))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "not_found");

    let response = env
        .client
        .get(format!("{}/v1/accounts?limit=0", env.app_url))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlink_keeps_data_unless_purged_and_frees_the_item() {
    let env = spawn_env().await;
    let (item, token) = env.create_item(60).await;
    let linked = env
        .link(&item, &token, "user-42", &["ada@example.com"])
        .await;
    let account = linked["id"].as_str().expect("id").to_string();
    env.converge(&account, &item).await;

    // Unlinked by its alias, as the README does it.
    let response = env
        .client
        .post(format!(
            "{}/v1/accounts/ada@example.com/unlink",
            env.app_url
        ))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    // Every key it is listed with still finds it, unlinked, with its data.
    for key in [
        "ada@example.com",
        item.as_str(),
        "user-42",
        account.as_str(),
    ] {
        let kept = env
            .get_json(&format!("{}/v1/accounts/{key}", env.app_url))
            .await;
        assert_eq!(kept["id"], account.as_str(), "{key}");
        assert_eq!(kept["status"], "unlinked", "{key}");
        assert_eq!(kept["aliases"], serde_json::json!(["ada@example.com"]));
    }
    assert_eq!(env.local_transactions(&account).await.len(), 60);

    // Deleted by the same alias.
    let response = env
        .client
        .delete(format!("{}/v1/accounts/ada@example.com", env.app_url))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    for key in ["ada@example.com", account.as_str()] {
        let response = env
            .client
            .get(format!("{}/v1/accounts/{key}", env.app_url))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 404, "{key}");
    }
    // The item and alias are free for a new link.
    let again = env
        .link(&item, &token, "user-42", &["ada@example.com"])
        .await;
    assert_ne!(again["id"], account.as_str());
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_paged_and_date_filtered() {
    let env = spawn_env().await;
    let (account, item) = env.linked_item(300).await;
    let all = env.converge(&account, &item).await;
    let mut dates: Vec<String> = all
        .iter()
        .map(|t| t["date"].as_str().expect("date").to_string())
        .collect();
    dates.sort();
    let (start, end) = (&dates[100], &dates[200]);
    let expected = dates.iter().filter(|d| *d >= start && *d <= end).count();
    let page = env
        .get_json(&format!(
            "{}/v1/accounts/{account}/transactions?start_date={start}&end_date={end}&limit=1000",
            env.app_url
        ))
        .await;
    assert_eq!(
        page["transactions"].as_array().map(|a| a.len()),
        Some(expected)
    );
    let first = env
        .get_json(&format!(
            "{}/v1/accounts/{account}/transactions?limit=7",
            env.app_url
        ))
        .await;
    assert_eq!(first["transactions"].as_array().map(|a| a.len()), Some(7));
    assert!(first["next"].is_string());
    let response = env
        .client
        .get(format!(
            "{}/v1/accounts/{account}/transactions?start_date=yesterday",
            env.app_url
        ))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
    env.shutdown().await;
}
