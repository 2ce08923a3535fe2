//! What only the PostgreSQL store has: opening (migrations applied once, in the
//! configured schema; clear errors for an unreachable database, a missing database and
//! a schema newer than the binary), the typed columns users query, sealed tokens, and
//! batched ingest. Behaviour shared with sled is in the contract suite.

use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, TimeZone, Utc};
use secrecy::SecretString;
use serde_json::json;

use super::{PgStore, PgStoreConfig};
use crate::domain::{AccessToken, Account, ProviderKind, Transaction};
use crate::secrets::Keyring;
use crate::store::contract::{row, sync};
use crate::store::{
    AccountStore, ApplyMode, InboxStore, IncomingWebhook, IngestOutcome, RowStore, StoreError,
};
use crate::testing::{PgServer, TestDatabase};

fn keyring() -> Keyring {
    Keyring::from_specs(&["k1:KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio="]).unwrap()
}

fn config(url: &str) -> PgStoreConfig {
    PgStoreConfig {
        url: SecretString::from(url.to_owned()),
        schema: "acctor".into(),
        pool_size: 8,
        statement_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(5),
    }
}

fn fresh() -> (&'static PgServer, TestDatabase, Arc<PgStore>) {
    let server = PgServer::shared().expect("postgres");
    let db = server.create_database().expect("database");
    let store = PgStore::open(config(&db.url), keyring()).expect("store opens");
    (server, db, store)
}

fn account(item: &str) -> Account {
    Account::new_linked(
        ProviderKind::Plaid,
        item.into(),
        AccessToken::new("access-sandbox-very-secret"),
        "owner-1".into(),
        vec!["ada@example.com".into()],
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
    )
}

#[test]
fn opening_twice_migrates_once_into_the_configured_schema() {
    let (server, db, store) = fresh();
    drop(store);
    let again = PgStore::open(config(&db.url), keyring()).expect("reopens");
    drop(again);
    let applied = server
        .psql(
            &db.name,
            "SELECT count(*) FROM acctor._sqlx_migrations WHERE success",
        )
        .unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count();
    assert_eq!(applied, files.to_string());
    let tables = server
        .psql(
            &db.name,
            "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables \
             WHERE table_schema = 'acctor' AND table_name IN \
             ('accounts','aliases','transactions','inbox','due','incidents','outbox','dedup')",
        )
        .unwrap();
    assert_eq!(
        tables,
        "accounts,aliases,dedup,due,inbox,incidents,outbox,transactions"
    );
    assert_eq!(
        server
            .psql(
                &db.name,
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
            )
            .unwrap(),
        "0",
        "nothing outside the schema"
    );
}

#[test]
fn a_schema_migrated_by_a_newer_acctor_is_refused_in_one_line() {
    let (server, db, store) = fresh();
    drop(store);
    server
        .psql(
            &db.name,
            "INSERT INTO acctor._sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99991231000000, 'from the future', true, '\\x00', 0)",
        )
        .unwrap();
    let error = PgStore::open(config(&db.url), keyring())
        .unwrap_err()
        .to_string();
    assert!(error.contains("newer acctor"), "{error}");
    assert!(error.contains("99991231000000"), "{error}");
    assert!(!error.contains('\n'), "one line: {error}");
}

#[test]
fn an_unreachable_or_missing_database_is_one_clear_line() {
    // A port nothing listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut unreachable = config(&format!("postgres://nobody@127.0.0.1:{port}/x"));
    unreachable.connect_timeout = Duration::from_secs(2);
    let error = PgStore::open(unreachable, keyring())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("cannot connect to PostgreSQL at 127.0.0.1"),
        "{error}"
    );
    assert!(!error.contains('\n'), "{error}");

    let server = PgServer::shared().unwrap();
    let error = PgStore::open(config(&server.url("no_such_database")), keyring())
        .unwrap_err()
        .to_string();
    assert!(error.contains("no such database"), "{error}");

    // A role the server does not know: refused at authentication.
    let stranger = format!(
        "postgres://no_such_role@127.0.0.1:{}/postgres",
        server.port()
    );
    let error = PgStore::open(config(&stranger), keyring())
        .unwrap_err()
        .to_string();
    assert!(error.contains("credentials refused"), "{error}");
    assert!(!error.contains('\n'), "{error}");
}

#[test]
fn transactions_have_typed_columns_and_tokens_are_sealed() {
    let (server, db, store) = fresh();
    let acc = account("item-typed");
    store.link_account(&acc).unwrap();
    let body = json!({
        "transaction_id": "t1", "amount": 12.5, "iso_currency_code": "EUR",
        "name": "COFFEE 123", "merchant_name": "Coffee", "pending": false,
        "personal_finance_category": {"primary": "FOOD_AND_DRINK"}, "note": "a\u{0}b"
    });
    let row = Transaction {
        id: "t1".into(),
        date: NaiveDate::from_ymd_opt(2026, 1, 2).unwrap(),
        body,
    };
    store
        .commit_sync(sync(
            &acc.id,
            ApplyMode::Delta,
            vec![row],
            &[],
            vec![],
            "c1",
        ))
        .unwrap();
    let row = server
        .psql(
            &db.name,
            "SELECT concat_ws(',', account_id, transaction_id, date, amount, currency, name, merchant, pending, category) \
             FROM acctor.transactions",
        )
        .unwrap();
    assert_eq!(
        row,
        format!(
            "{},t1,2026-01-02,12.5,EUR,COFFEE 123,Coffee,f,FOOD_AND_DRINK",
            acc.id
        )
    );
    let dump = server
        .psql(&db.name, "SELECT record::text FROM acctor.accounts")
        .unwrap();
    assert!(!dump.contains("very-secret"), "token in clear: {dump}");
    assert!(dump.contains("\"sealed\""), "{dump}");
    assert_eq!(
        store
            .get_account(&acc.id)
            .unwrap()
            .unwrap()
            .access_token
            .expose(),
        "access-sandbox-very-secret"
    );
    // A keyring without the sealing key is refused at open.
    drop(store);
    let other = Keyring::from_specs(&["k2:KysrKysrKysrKysrKysrKysrKysrKysrKysrKysrKys="]).unwrap();
    let error = PgStore::open(config(&db.url), other).unwrap_err();
    assert!(matches!(error, StoreError::Secret(_)), "{error}");
}

#[test]
fn concurrent_webhooks_share_commits_and_each_gets_its_own_outcome() {
    let (_server, db, store) = fresh();
    let acc = account("item-burst");
    store.link_account(&acc).unwrap();
    // Hold the item's advisory lock (the one ingest takes) so the webhooks pile up
    // while the first batches wait for it.
    let mut holder = store.handle.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended('plaid' || chr(31) || 'item-burst', 0))",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn
    });
    let (submitted_before, batches_before) = store.ingest_counts();
    let threads: Vec<_> = (0..64u32)
        .map(|n| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut dedup_key = [0u8; 32];
                dedup_key[..4].copy_from_slice(&(n % 32).to_be_bytes());
                store
                    .ingest(
                        IncomingWebhook {
                            provider: ProviderKind::Plaid,
                            item_id: "item-burst".into(),
                            kind: "TRANSACTIONS/SYNC_UPDATES_AVAILABLE".into(),
                            dedup_key,
                            body: json!({ "n": n % 32 }),
                            received_at: Utc::now(),
                        },
                        Duration::from_secs(900),
                    )
                    .unwrap()
            })
        })
        .collect();
    // Every webhook is handed over (a condition, not a timing guess) before the lock goes.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.ingest_counts().0 < submitted_before + 64 {
        assert!(
            std::time::Instant::now() < deadline,
            "webhooks not submitted"
        );
        std::thread::yield_now();
    }
    assert_eq!(
        store.ingest_counts().1,
        batches_before,
        "nothing committed while locked"
    );
    store.handle.block_on(async {
        sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    });
    let outcomes: Vec<IngestOutcome> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let accepted = outcomes
        .iter()
        .filter(
            |o| matches!(o, IngestOutcome::Accepted { account_id: Some(id), .. } if *id == acc.id),
        )
        .count();
    assert_eq!(accepted, 32, "one per distinct key: {outcomes:?}");
    assert_eq!(store.pending_inbox(&acc.id).unwrap().len(), 32);
    // At most one batch per batcher was taken while the lock was held; everything
    // else waited in the queue and went in the batchers' next rounds.
    let batches = store.ingest_counts().1 - batches_before;
    assert!(
        batches <= 2 * super::inbox::BATCHERS as u64,
        "64 webhooks in {batches} commits"
    );
}

/// A transaction failing with SQLSTATE 40P01 (deadlock detected) runs again, at most
/// five times in all; past that the error is surfaced. The failure is provoked by a
/// trigger raising that SQLSTATE for the first N inserts (counted by a sequence, which
/// a rollback does not undo), so the test does not depend on which of two deadlocked
/// sessions the database picks as victim.
#[test]
fn a_deadlock_is_retried_a_bounded_number_of_times_then_surfaced() {
    let (server, db, store) = fresh();
    let acc = account("item-deadlock");
    store.link_account(&acc).unwrap();
    server
        .psql(
            &db.name,
            "CREATE SEQUENCE acctor.provoked; \
             CREATE TABLE acctor.provoke (failures bigint NOT NULL); \
             INSERT INTO acctor.provoke VALUES (2); \
             CREATE FUNCTION acctor.provoke_deadlock() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN \
               IF nextval('acctor.provoked') <= (SELECT failures FROM acctor.provoke) THEN \
                 RAISE EXCEPTION 'provoked deadlock' USING ERRCODE = '40P01'; \
               END IF; \
               RETURN NEW; \
             END $$; \
             CREATE TRIGGER provoke BEFORE INSERT ON acctor.transactions \
               FOR EACH ROW EXECUTE FUNCTION acctor.provoke_deadlock();",
        )
        .unwrap();
    let commit = |cursor: &str, id: &str| {
        sync(
            &acc.id,
            ApplyMode::Delta,
            vec![row(id, "2026-01-02")],
            &[],
            vec![],
            cursor,
        )
    };
    let before = store.conflicts();
    store
        .commit_sync(commit("c1", "t1"))
        .expect("third attempt commits");
    assert_eq!(store.conflicts() - before, 2);
    assert_eq!(store.count_transactions(&acc.id).unwrap(), 1);

    // Always failing: five attempts, then the error, and nothing of the commit.
    server
        .psql(
            &db.name,
            "UPDATE acctor.provoke SET failures = 1000000; ALTER SEQUENCE acctor.provoked RESTART",
        )
        .unwrap();
    let error = store
        .commit_sync(commit("c2", "t2"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("after 5 attempts"), "{error}");
    assert!(error.contains("provoked deadlock"), "{error}");
    assert_eq!(
        server
            .psql(&db.name, "SELECT last_value FROM acctor.provoked")
            .unwrap(),
        "5"
    );
    let account = store.get_account(&acc.id).unwrap().unwrap();
    assert_eq!(account.cursor.as_deref(), Some("c1"));
    assert_eq!(store.count_transactions(&acc.id).unwrap(), 1);
}

/// The privileges the README asks for are enough: a role owning a schema an
/// administrator created for it opens the store without CREATE on the database; the
/// same role without its schema gets a line saying what to grant.
#[test]
fn a_role_owning_its_schema_needs_no_other_privilege() {
    let server = PgServer::shared().unwrap();
    let db = server.create_database().unwrap();
    let role = format!("app_{}", db.name);
    server
        .psql(
            &db.name,
            &format!(
                "CREATE ROLE {role} LOGIN; REVOKE ALL ON DATABASE {db} FROM PUBLIC; \
                 GRANT CONNECT ON DATABASE {db} TO {role}",
                db = db.name
            ),
        )
        .unwrap();
    let url = format!("postgres://{role}@127.0.0.1:{}/{}", server.port(), db.name);
    let error = PgStore::open(config(&url), keyring())
        .unwrap_err()
        .to_string();
    assert!(error.contains("creating schema acctor"), "{error}");
    assert!(error.contains("permission denied"), "{error}");

    server
        .psql(
            &db.name,
            &format!("CREATE SCHEMA acctor AUTHORIZATION {role}"),
        )
        .unwrap();
    let store = PgStore::open(config(&url), keyring()).expect("opens as the schema's owner");
    store.link_account(&account("item-role")).unwrap();
    assert_eq!(store.count_accounts().unwrap(), 1);
}

/// `acctor rotate-key` on PostgreSQL: tokens sealed with the old key are re-sealed with
/// the new one (once: a second run re-seals nothing), after which the old key is no
/// longer needed.
#[test]
fn rotating_the_key_reseals_every_token_once() {
    let (_server, db, store) = fresh();
    let acc = account("item-rotate");
    store.link_account(&acc).unwrap();
    drop(store);
    let both = Keyring::from_specs(&[
        "k2:KysrKysrKysrKysrKysrKysrKysrKysrKysrKysrKys=",
        "k1:KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=",
    ])
    .unwrap();
    let store = PgStore::open(config(&db.url), both).unwrap();
    assert_eq!(store.rotate_secrets().unwrap(), 1);
    assert_eq!(store.rotate_secrets().unwrap(), 0, "idempotent");
    drop(store);
    let only_new =
        Keyring::from_specs(&["k2:KysrKysrKysrKysrKysrKysrKysrKysrKysrKysrKys="]).unwrap();
    let store = PgStore::open(config(&db.url), only_new).expect("the old key is not needed");
    assert_eq!(
        store
            .get_account(&acc.id)
            .unwrap()
            .unwrap()
            .access_token
            .expose(),
        "access-sandbox-very-secret"
    );
}

/// A database migrated by a version from before operations, holding an account's open
/// incident, is migrated at open: the incident reads as the account's, is refreshed and
/// resolved by its subject, and the table now refuses a row with no subject (or two).
#[test]
fn incidents_of_a_schema_from_before_operations_are_kept_and_subjects_are_checked() {
    use crate::domain::incidents::{IncidentKind, IncidentSubject, OpenIncident};
    use crate::domain::AccountId;
    use crate::store::IncidentStore;

    let server = PgServer::shared().expect("postgres");
    let db = server.create_database().expect("database");
    server
        .psql(&db.name, "CREATE SCHEMA acctor")
        .expect("schema");
    // Only the first migration, as the version before operations applied it.
    let first = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(super::MIGRATOR.iter().take(1).cloned().collect()),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let options: sqlx::postgres::PgConnectOptions = db.url.parse().expect("url");
        let options = options.options([("search_path", "acctor")]);
        let pool = sqlx::PgPool::connect_with(options).await.expect("connect");
        first.run(&pool).await.expect("first migration");
        pool.close().await;
    });
    server
        .psql(
            &db.name,
            "INSERT INTO acctor.incidents (id, account_id, kind, severity, opened_at, \
             updated_at, resolved_at, occurrences, details) VALUES (nextval('acctor.incident_id_seq'), \
             'acc_old', 'needs_reauth', 'critical', '2026-01-01T00:00:00Z', \
             '2026-01-01T00:00:00Z', NULL, 1, '{\"code\": \"X\"}')",
        )
        .expect("an old incident");

    let store = PgStore::open(config(&db.url), keyring()).expect("migrates and opens");
    let subject = IncidentSubject::Account(AccountId("acc_old".into()));
    let old = store
        .open_incident_of(&subject, IncidentKind::NeedsReauth)
        .expect("read")
        .expect("open");
    assert_eq!(old.subject(), Some(subject.clone()));
    assert_eq!(old.details, json!({ "code": "X" }));
    let at = Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap();
    let refreshed = store
        .open_incident(&OpenIncident {
            subject: subject.clone(),
            kind: IncidentKind::NeedsReauth,
            details: json!({}),
            at,
            notify: false,
        })
        .expect("refresh");
    assert_eq!((refreshed.id, refreshed.occurrences), (old.id, 2));
    store
        .resolve_incident(&subject, IncidentKind::NeedsReauth, at, false)
        .expect("resolve")
        .expect("was open");

    for (account, operation) in [("NULL", "NULL"), ("'acc_x'", "'op_x'")] {
        let refused = server.psql(
            &db.name,
            &format!(
                "INSERT INTO acctor.incidents (id, account_id, operation_id, kind, severity, \
                 opened_at, updated_at, occurrences, details) VALUES (999, {account}, \
                 {operation}, 'operation_failed', 'critical', now(), now(), 1, '{{}}')"
            ),
        );
        assert!(refused.is_err(), "{account}, {operation}: {refused:?}");
    }
}
