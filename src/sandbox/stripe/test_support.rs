//! Test support for the Stripe sandbox's tests: a whole sandbox served on 127.0.0.1:0
//! (so calls go through the `/stripe` nesting, as acctor's do), acctor's own Stripe
//! client pointed at it, and raw reqwest helpers for what the client does not send
//! (writes, bad parameters). Webhooks are received with the bank's test receiver.

use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;

use crate::domain::stripe::Window;
use crate::providers::stripe::{ListRequest, StripeAccess, StripeClient, StripeClientConfig};
pub(crate) use crate::sandbox::bank_test_support::Receiver;
use crate::sandbox::{
    BankSandboxConfig, SandboxAccount, SandboxConfig, SandboxHandle, StripeSandbox,
};

/// A sandbox serving Stripe.
pub(crate) struct StripeEnv {
    pub stripe: StripeSandbox,
    pub handle: SandboxHandle,
    pub http: reqwest::Client,
}

impl StripeEnv {
    /// A sandbox on port 0 seeded with `seed`.
    pub async fn start(seed: u64) -> StripeEnv {
        let sandbox = crate::sandbox::Sandbox::new(SandboxConfig {
            client_id: "c".into(),
            secret: "s".into(),
            default_webhook_url: None,
            seed,
            data_dir: None,
            bank: BankSandboxConfig::default(),
        })
        .expect("sandbox");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let stripe = sandbox.stripe().clone();
        let handle = sandbox.serve(listener).await;
        StripeEnv {
            stripe,
            handle,
            http: reqwest::Client::new(),
        }
    }

    /// Stripe's base URL: `{sandbox}/stripe`.
    pub fn base_url(&self) -> String {
        format!("{}/stripe", self.handle.base_url())
    }

    /// acctor's client, without a request budget.
    pub fn client(&self) -> StripeClient {
        StripeClient::new(StripeClientConfig {
            base_url: self.base_url(),
            timeout: Duration::from_secs(10),
            test_rate: 0,
            live_rate: 0,
        })
        .expect("client")
    }

    /// A GET with `key` (and `Stripe-Account`); status, headers and JSON body.
    pub async fn get(
        &self,
        key: &str,
        connect: Option<&str>,
        path_and_query: &str,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut request = self
            .http
            .get(format!("{}{path_and_query}", self.base_url()))
            .bearer_auth(key);
        if let Some(account) = connect {
            request = request.header("Stripe-Account", account);
        }
        answer(request).await
    }

    /// A form POST with `key` and an optional idempotency key.
    pub async fn post(
        &self,
        key: &str,
        path: &str,
        idempotency_key: Option<&str>,
        form: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let body: Vec<String> = form
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let mut request = self
            .http
            .post(format!("{}{path}", self.base_url()))
            .bearer_auth(key)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.join("&"));
        if let Some(idempotency_key) = idempotency_key {
            request = request.header("Idempotency-Key", idempotency_key);
        }
        answer(request).await
    }
}

/// Percent-encodes a form component (enough for the tests' values).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                char::from(b).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

async fn answer(request: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = request.send().await.expect("sandbox answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    assert!(
        headers
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("req_")),
        "every answer has a Request-Id"
    );
    let body = response.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

/// The access of an account reached with its own key.
pub(crate) fn access(account: &SandboxAccount) -> StripeAccess<'_> {
    StripeAccess {
        api_key: &account.api_key,
        account: &account.id,
        connect: false,
        livemode: false,
    }
}

/// A window over all of time.
pub(crate) const ALL_TIME: Window = Window {
    gte: 0,
    lt: i64::MAX,
    after: None,
};

/// Every id of `window`, paged with acctor's client `limit` at a time.
pub(crate) async fn list_all(
    client: &StripeClient,
    access: StripeAccess<'_>,
    object_type: crate::domain::stripe::ObjectType,
    window: Window,
    limit: u32,
) -> Vec<Value> {
    use crate::providers::stripe::StripeApi;
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = client
            .list(
                access,
                object_type,
                ListRequest {
                    window: window.clone(),
                    starting_after: after.as_deref(),
                    limit,
                },
            )
            .await
            .expect("a page")
            .value;
        assert_eq!(page.object, "list");
        assert_eq!(page.url, format!("/v1/{}", object_type.as_str()));
        after = page
            .data
            .last()
            .and_then(|o| o["id"].as_str())
            .map(str::to_owned);
        all.extend(page.data);
        if !page.has_more {
            return all;
        }
    }
}

/// The ids of `objects`.
pub(crate) fn ids(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|o| o["id"].as_str().expect("an id").to_owned())
        .collect()
}
