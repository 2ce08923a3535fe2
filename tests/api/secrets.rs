//! Secrets at rest through the whole service: a token linked over the API reaches no
//! file of the data dir in the clear, syncs keep working across a restart (the sealed
//! token opens), and a real provider without a configured key refuses to start.

use acctor::app::App;
use acctor::config::StoreBackend;

use crate::helpers::*;

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_token_is_sealed_on_disk_and_still_syncs_after_a_restart() {
    let mut env = spawn_env().await;
    let (item_id, token) = env.create_item(5).await;
    let account = env.link(&item_id, &token, "owner-sealed", &[]).await;
    let account = account["id"].as_str().expect("id").to_string();
    env.converge(&account, &item_id).await;
    env.stop_app().await;

    // The sandbox keeps its state in memory: every file here is acctor's, and on
    // PostgreSQL every row of acctor's tables.
    let (stored, sealed_marker): (Vec<(String, Vec<u8>)>, &[u8]) = match backend_of_this_test() {
        StoreBackend::Sled => (
            files_under(env.data_dir.path())
                .into_iter()
                .map(|file| {
                    let bytes = std::fs::read(&file).expect("read");
                    (file.display().to_string(), bytes)
                })
                .collect(),
            br#""access_token":{"sealed":"v1:test:"#,
        ),
        StoreBackend::Postgres => (
            vec![(
                "the database".to_string(),
                postgres_dump(env.data_dir.path()).into_bytes(),
            )],
            br#""access_token": {"sealed": "v1:test:"#,
        ),
    };
    let mut sealed_records = 0;
    for (place, bytes) in &stored {
        assert!(
            !contains(bytes, token.as_bytes()),
            "{place} holds the access token in the clear"
        );
        if contains(bytes, sealed_marker) {
            sealed_records += 1;
        }
    }
    // The scan saw the account record, sealed with the configured key.
    assert!(sealed_records > 0, "no sealed account record found");

    // After a restart the sealed token opens: new transactions still sync.
    env.restart_app().await;
    env.mutate(&item_id, 3, 1, 0).await;
    env.converge(&account, &item_id).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_provider_without_a_key_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = test_settings(dir.path(), "https://production.plaid.com");
    settings.secrets.key = None;
    let error = match App::build(settings).await {
        Ok(_) => panic!("started without a key for secrets at rest"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("no key for secrets at rest") && error.contains("secrets.key"),
        "{error}"
    );
    assert!(!dir.path().join("secrets.key").exists());
}
