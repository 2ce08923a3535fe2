//! Restart tests for a sandbox kept in a data dir: each starts a sandbox on a fresh
//! temp dir, changes it, stops it (cleanly or not) and starts a new one on the same dir.

use std::path::Path;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::persist::SaveReport;
use super::webhooks::verify_webhook;
use super::*;
use crate::providers::plaid::wire::{PlaidJwk, PlaidTransaction};

const CLIENT_ID: &str = "persist-client";
const SECRET: &str = "persist-secret";

fn config(dir: &Path, seed: u64) -> SandboxConfig {
    SandboxConfig {
        client_id: CLIENT_ID.into(),
        secret: SECRET.into(),
        default_webhook_url: None,
        seed,
        data_dir: Some(dir.to_path_buf()),
    }
}

struct Served {
    sandbox: Sandbox,
    handle: SandboxHandle,
    http: reqwest::Client,
}

async fn serve(sandbox: Sandbox) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = sandbox.clone().serve(listener).await;
    Served {
        sandbox,
        handle,
        http: reqwest::Client::new(),
    }
}

/// The net result of one `/transactions/sync` loop.
#[derive(Debug, PartialEq)]
struct Loop {
    added: Vec<PlaidTransaction>,
    modified: Vec<PlaidTransaction>,
    removed: Vec<String>,
    cursor: String,
}

impl Served {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.handle.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn plaid(&self, path: &str, mut body: Value) -> (u16, Value) {
        body["client_id"] = CLIENT_ID.into();
        body["secret"] = SECRET.into();
        self.post(path, body).await
    }

    async fn sync_loop(&self, token: &str, cursor: &str) -> Loop {
        let mut out = Loop {
            added: vec![],
            modified: vec![],
            removed: vec![],
            cursor: cursor.to_string(),
        };
        loop {
            let (status, page) = self
                .plaid(
                    "/transactions/sync",
                    json!({"access_token": token, "cursor": out.cursor, "count": 7}),
                )
                .await;
            assert_eq!(status, 200, "{page}");
            let rows = |key: &str| -> Vec<PlaidTransaction> {
                serde_json::from_value(page[key].clone()).unwrap()
            };
            out.added.extend(rows("added"));
            out.modified.extend(rows("modified"));
            out.removed.extend(
                page["removed"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["transaction_id"].as_str().unwrap().to_string()),
            );
            out.cursor = page["next_cursor"].as_str().unwrap().to_string();
            if page["has_more"] == false {
                return out;
            }
        }
    }

    async fn jwk(&self, kid: &str) -> PlaidJwk {
        let (status, body) = self
            .plaid("/webhook_verification_key/get", json!({"key_id": kid}))
            .await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body["key"].clone()).unwrap()
    }
}

fn kid_of(jwt: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let header = jwt.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    header["kid"].as_str().unwrap().to_string()
}

/// A webhook receiver on port 0 that pushes each delivery into a channel.
async fn receiver() -> (String, mpsc::UnboundedReceiver<(HeaderMap, Bytes)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    async fn hook(
        State(tx): State<mpsc::UnboundedSender<(HeaderMap, Bytes)>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> StatusCode {
        let _ = tx.send((headers, body));
        StatusCode::OK
    }
    let app = Router::new().route("/hook", post(hook)).with_state(tx);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rx)
}

fn ids(txns: &[PlaidTransaction]) -> Vec<String> {
    let mut ids: Vec<String> = txns.iter().map(|t| t.transaction_id.clone()).collect();
    ids.sort();
    ids
}

fn strings(value: &Value) -> Vec<String> {
    let mut out: Vec<String> = value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_cleanly_restarted_sandbox_keeps_data_cursors_and_webhook_key() {
    let dir = tempfile::tempdir().unwrap();
    let (hook_url, mut hooks) = receiver().await;
    let first = serve(Sandbox::new(config(dir.path(), 3)).unwrap()).await;
    let (status, created) = first
        .post("/admin/items", json!({"history": 120, "webhook": hook_url}))
        .await;
    assert_eq!(status, 200, "{created}");
    let item_id = created["item_id"].as_str().unwrap().to_string();
    let token = created["access_token"].as_str().unwrap().to_string();
    let (status, _) = first
        .post(
            &format!("/admin/items/{item_id}/mutate"),
            json!({"add": 4, "modify": 6, "remove": 2, "fire_webhook": false}),
        )
        .await;
    assert_eq!(status, 200);
    let settled = first.sync_loop(&token, "").await.cursor;
    let (status, later) = first
        .post(
            &format!("/admin/items/{item_id}/mutate"),
            json!({"add": 5, "modify": 7, "remove": 3, "fire_webhook": false}),
        )
        .await;
    assert_eq!(status, 200);
    // Syncing does not change the bank, so this is what the same cursor must give
    // after the restart.
    let expected = first.sync_loop(&token, &settled).await;
    assert_eq!(ids(&expected.added), strings(&later["added"]));
    assert_eq!(expected.removed.len(), 3);
    let faults =
        first
            .sandbox
            .bank()
            .item(&item_id)
            .unwrap()
            .update_faults(plaid_bank::FaultsUpdate {
                duplicate_webhooks: Some(1),
                ..Default::default()
            });
    let kid = kid_of(&first.sandbox.sign_webhook(b"{}", 1));
    let jwk_before = first.jwk(&kid).await;
    let transactions_before = first.sandbox.current_transactions(&item_id).unwrap();
    first.handle.shutdown().await.unwrap();

    // Another configured seed: the stored one must win, or new ids could collide.
    let second = serve(Sandbox::new(config(dir.path(), 99)).unwrap()).await;
    assert_eq!(second.sandbox.bank().header().seed, 3);
    assert_eq!(
        second.sandbox.current_transactions(&item_id).unwrap(),
        transactions_before
    );
    assert_eq!(
        second.sandbox.bank().item(&item_id).unwrap().faults(),
        faults
    );
    let resumed = second.sync_loop(&token, &settled).await;
    assert_eq!(
        resumed, expected,
        "the old cursor resumes at the same point"
    );
    assert_eq!(second.jwk(&kid).await, jwk_before);

    let (status, fired) = second
        .post(&format!("/admin/items/{item_id}/webhook"), json!({}))
        .await;
    assert_eq!(status, 200, "{fired}");
    let (headers, body) = hooks.try_recv().unwrap();
    let jwt = headers[VERIFICATION_HEADER].to_str().unwrap();
    verify_webhook(&jwk_before, jwt, &body);
    assert!(
        hooks.try_recv().is_ok(),
        "the duplicate-webhook fault survived"
    );

    let newer = second.sandbox.create_item(3, None);
    assert_ne!(newer.item_id, item_id);
    assert_ne!(newer.access_token, token);
    second.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unclean_stop_keeps_the_saved_data_but_refuses_older_cursors() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(config(dir.path(), 5)).unwrap();
    let created = sandbox.create_item(40, None);
    let item = sandbox.bank().item(&created.item_id).unwrap();
    let cursor = item
        .sync_page(sandbox.bank().codec(), None, 100)
        .unwrap()
        .next_cursor;
    sandbox.checkpoint().unwrap();
    let before = sandbox.current_transactions(&created.item_id).unwrap();
    let kid = kid_of(&sandbox.sign_webhook(b"{}", 1));
    // No shutdown: as if the process had been killed after a periodic save.
    drop((item, sandbox));

    let restarted = Sandbox::new(config(dir.path(), 5)).unwrap();
    assert_eq!(
        restarted.current_transactions(&created.item_id).unwrap(),
        before
    );
    assert_eq!(kid_of(&restarted.sign_webhook(b"{}", 1)), kid);
    let item = restarted.bank().item(&created.item_id).unwrap();
    let refused = item.sync_page(restarted.bank().codec(), Some(&cursor), 100);
    assert!(
        matches!(refused, Err(plaid_bank::SyncError::CursorRejected(_))),
        "positions handed out after the last save may be lost"
    );
    let fresh = item.sync_page(restarted.bank().codec(), None, 100).unwrap();
    assert_eq!(ids(&fresh.added), ids(&before));
}

#[tokio::test]
async fn a_save_rewrites_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(config(dir.path(), 8)).unwrap();
    let persister = sandbox.inner.persister.as_ref().unwrap();
    let save = || {
        persister
            .save(sandbox.bank(), sandbox.inner.webhooks.signer(), false)
            .unwrap()
    };
    assert_eq!(save(), SaveReport::default(), "new() already saved");
    let a = sandbox.create_item(10, None);
    let b = sandbox.create_item(10, None);
    assert_eq!(
        save(),
        SaveReport {
            items: 2,
            bank: true
        }
    );
    assert_eq!(save(), SaveReport::default());
    let item_a = sandbox.bank().item(&a.item_id).unwrap();
    item_a
        .sync_page(sandbox.bank().codec(), None, 5)
        .expect("reading");
    assert_eq!(save(), SaveReport::default(), "a sync changes nothing");
    item_a.mutate(1, 0, 0, sandbox.bank().today()).unwrap();
    sandbox
        .bank()
        .item(&b.item_id)
        .unwrap()
        .set_login_required(true);
    assert_eq!(
        save(),
        SaveReport {
            items: 2,
            bank: false
        }
    );
}

#[tokio::test]
async fn a_served_sandbox_saves_changes_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(Sandbox::new(config(dir.path(), 9)).unwrap()).await;
    let created = served.sandbox.create_item(5, None);
    let path = dir
        .path()
        .join("items")
        .join(format!("{}.json", created.item_id));
    // Waits for the periodic save (every SAVE_INTERVAL), bounded.
    let deadline = std::time::Instant::now() + 10 * SAVE_INTERVAL;
    while !path.exists() {
        assert!(std::time::Instant::now() < deadline, "no periodic save");
        tokio::time::sleep(SAVE_INTERVAL / 10).await;
    }
    // Dropping the handle stops the saver without a final (clean) save.
    drop(served);
    let restarted = Sandbox::new(config(dir.path(), 9)).unwrap();
    assert_eq!(
        restarted
            .current_transactions(&created.item_id)
            .unwrap()
            .len(),
        5
    );
}

#[tokio::test]
async fn a_damaged_snapshot_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(config(dir.path(), 4)).unwrap();
    let created = sandbox.create_item(10, None);
    sandbox.checkpoint().unwrap();
    drop(sandbox);
    let item_path = dir
        .path()
        .join("items")
        .join(format!("{}.json", created.item_id));
    let bank_path = dir.path().join("sandbox.json");
    let good_item = std::fs::read(&item_path).unwrap();
    let good_bank = std::fs::read(&bank_path).unwrap();
    let open = || Sandbox::new(config(dir.path(), 4)).map(|_| ());
    assert!(open().is_ok());

    std::fs::write(&item_path, &good_item[..good_item.len() / 2]).unwrap();
    assert!(matches!(open(), Err(SandboxError::Corrupt { path, .. }) if path == item_path));

    // Well-formed JSON that breaks an invariant the sync code relies on.
    let mut damaged: Value = serde_json::from_slice(&good_item).unwrap();
    damaged["transactions"][0]["last_change"] = 10_000.into();
    std::fs::write(&item_path, damaged.to_string()).unwrap();
    let err = open().unwrap_err();
    assert!(
        err.to_string().contains("does not match the change log"),
        "{err}"
    );
    std::fs::write(&item_path, &good_item).unwrap();

    let mut future: Value = serde_json::from_slice(&good_bank).unwrap();
    future["version"] = 2.into();
    std::fs::write(&bank_path, future.to_string()).unwrap();
    assert!(matches!(
        open(),
        Err(SandboxError::UnsupportedVersion { found: 2, .. })
    ));

    std::fs::write(&bank_path, b"not json").unwrap();
    assert!(matches!(open(), Err(SandboxError::Corrupt { path, .. }) if path == bank_path));

    std::fs::remove_file(&bank_path).unwrap();
    let err = open().unwrap_err();
    assert!(err.to_string().contains("item snapshots"), "{err}");
}

#[tokio::test]
async fn without_a_data_dir_nothing_is_saved() {
    let sandbox = Sandbox::new(SandboxConfig {
        data_dir: None,
        ..config(Path::new("/unused"), 1)
    })
    .unwrap();
    sandbox.create_item(3, None);
    assert!(sandbox.data_dir().is_none());
    sandbox.checkpoint().unwrap();
    assert!(!Path::new("/unused").exists());
}

/// Timings for the report:
/// `cargo test --lib sandbox::persist_tests::timings -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn timings() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(config(dir.path(), 2)).unwrap();
    let created = sandbox.create_item(50_000, None);
    let item = sandbox.bank().item(&created.item_id).unwrap();
    let started = std::time::Instant::now();
    let copied = item.snapshot_if_changed(None).unwrap();
    println!(
        "copy a 50,000-txn item under its lock: {:?}",
        started.elapsed()
    );
    drop(copied);
    let started = std::time::Instant::now();
    sandbox.checkpoint().unwrap();
    let bytes = std::fs::metadata(
        dir.path()
            .join("items")
            .join(format!("{}.json", created.item_id)),
    )
    .unwrap()
    .len();
    println!("save it ({bytes} bytes): {:?}", started.elapsed());
    drop((item, sandbox));
    let started = std::time::Instant::now();
    let restarted = Sandbox::new(config(dir.path(), 2)).unwrap();
    println!("load it: {:?}", started.elapsed());
    assert_eq!(
        restarted
            .current_transactions(&created.item_id)
            .unwrap()
            .len(),
        50_000
    );
}
