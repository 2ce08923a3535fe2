//! Test support shared by the sandbox bank's tests and the bank client's tests: a
//! sandbox served on 127.0.0.1:0 with the bank under `/bank`, and a webhook receiver on
//! port 0 that answers scripted statuses and pushes what it gets into a channel.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub(crate) use super::iban::is_valid as iban_is_valid;
use super::BankSandboxConfig;
use crate::sandbox::{Sandbox, SandboxConfig, SandboxHandle};

/// The API key of test banks.
pub(crate) const API_KEY: &str = "test-bank-key";
/// The secrets test banks sign with (the current one, then the previous one).
pub(crate) const SECRETS: [&str; 2] = ["whsec-current", "whsec-previous"];
/// How long a test waits for a webhook that must come.
pub(crate) const WEBHOOK_WAIT: Duration = Duration::from_secs(10);

/// A sandbox serving the bank.
pub(crate) struct BankEnv {
    pub sandbox: Sandbox,
    pub handle: SandboxHandle,
}

impl BankEnv {
    /// A sandbox on port 0 whose bank has `seed` and sends webhooks to `webhook_url`.
    pub async fn start(seed: u64, webhook_url: Option<String>) -> BankEnv {
        let sandbox = Sandbox::new(SandboxConfig {
            client_id: "c".into(),
            secret: "s".into(),
            default_webhook_url: None,
            seed,
            data_dir: None,
            bank: BankSandboxConfig {
                api_key: API_KEY.into(),
                webhook_url,
                webhook_secrets: SECRETS.iter().map(|s| s.to_string()).collect(),
                seed,
            },
        })
        .expect("sandbox");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let handle = sandbox.clone().serve(listener).await;
        BankEnv { sandbox, handle }
    }

    /// The bank's base URL.
    pub fn base_url(&self) -> String {
        format!("{}/bank", self.handle.base_url())
    }
}

/// A webhook delivery as received.
pub(crate) type Delivery = (HeaderMap, Bytes);

/// A webhook receiver: answers the queued statuses (then 200) and forwards every
/// request to the channel.
pub(crate) struct Receiver {
    pub url: String,
    rx: mpsc::UnboundedReceiver<Delivery>,
}

type Answers = Arc<Mutex<VecDeque<u16>>>;

impl Receiver {
    /// A receiver on port 0 answering `answers` first.
    pub async fn start(answers: &[u16]) -> Receiver {
        let (tx, rx) = mpsc::unbounded_channel();
        let answers: Answers = Arc::new(Mutex::new(answers.iter().copied().collect()));
        async fn hook(
            State((tx, answers)): State<(mpsc::UnboundedSender<Delivery>, Answers)>,
            headers: HeaderMap,
            body: Bytes,
        ) -> StatusCode {
            let _ = tx.send((headers, body));
            let status = answers.lock().unwrap().pop_front().unwrap_or(200);
            StatusCode::from_u16(status).unwrap()
        }
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state((tx, answers));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, rx }
    }

    /// The next delivery; panics if none comes within [`WEBHOOK_WAIT`].
    pub async fn next(&mut self) -> Delivery {
        tokio::time::timeout(WEBHOOK_WAIT, self.rx.recv())
            .await
            .expect("a webhook within the wait")
            .expect("receiver running")
    }

    /// The next `n` deliveries' bodies as JSON.
    pub async fn next_bodies(&mut self, n: usize) -> Vec<serde_json::Value> {
        let mut bodies = Vec::new();
        for _ in 0..n {
            let (_, body) = self.next().await;
            bodies.push(serde_json::from_slice(&body).unwrap());
        }
        bodies
    }

    /// Everything received so far, without waiting.
    pub fn drain(&mut self) -> Vec<Delivery> {
        let mut out = Vec::new();
        while let Ok(delivery) = self.rx.try_recv() {
            out.push(delivery);
        }
        out
    }
}
