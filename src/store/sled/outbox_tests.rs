//! The outbox's record: a new alert's body is the incident event's exact bytes, and a
//! record in the encoding of the alert-only outbox reads back as the same message.

use serde_json::json;
use tempfile::TempDir;

use super::super::keys::{self, OUTBOX};
use super::super::test_support::*;
use super::{decode_message, LegacyAlertRecord};
use crate::domain::incidents::{AlertEventType, Incident, IncidentKind, OpenIncident};
use crate::domain::AccountId;
use crate::store::{Destination, Durability, IncidentStore, OutboxStore, StoreError};

fn raise(store: &super::SledStore, account: &str) -> Incident {
    store
        .open_incident(&OpenIncident {
            subject: AccountId(account.into()).into(),
            kind: IncidentKind::NeedsReauth,
            details: json!({ "code": "ITEM_LOGIN_REQUIRED", "z": 1, "a": [1.5, null] }),
            at: t0(),
            notify: true,
        })
        .unwrap()
}

/// The body the alert-only outbox sent: `{"type","timestamp","data"}` in that order,
/// the incident's fields in their declaration order.
fn old_body(event_type: &str, incident: &Incident) -> String {
    format!(
        r#"{{"type":"{event_type}","timestamp":{},"data":{}}}"#,
        serde_json::to_string(&t0()).unwrap(),
        serde_json::to_string(incident).unwrap()
    )
}

#[tokio::test]
async fn an_alert_is_enqueued_with_the_incident_events_exact_bytes() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let incident = raise(&store, "acc_a");
    let message = &store.pending_outbox(10).unwrap()[0];
    assert_eq!(message.destination, Destination::Alerts);
    assert_eq!(message.event_type, "incident.opened");
    assert_eq!(
        (
            message.created_at,
            message.next_attempt_at,
            message.attempts
        ),
        (t0(), t0(), 0)
    );
    assert_eq!(
        message.payload.as_str(),
        old_body("incident.opened", &incident)
    );
    // The stored record keeps the body verbatim (not a re-sorted JSON value).
    let stored = store.outbox.get(keys::id_key(message.id)).unwrap().unwrap();
    let text = String::from_utf8_lossy(&stored[1..]).into_owned();
    assert!(text.contains(message.payload.as_str()), "{text}");
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_old_alert_record_reads_back_as_the_alert_message_it_stands_for() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let incident = raise(&store, "acc_new");
    let new = store.pending_outbox(10).unwrap().remove(0);
    // The same alert, written the way the alert-only outbox wrote it, after two
    // failed attempts.
    let old = LegacyAlertRecord {
        id: 99,
        event_type: AlertEventType::Opened,
        incident: incident.clone(),
        created_at: t0(),
        next_attempt_at: t0() + minutes(3),
        attempts: 2,
        last_error: Some("receiver answered 503".into()),
    };
    let bytes = keys::encode(OUTBOX, &old).unwrap();
    let read = decode_message(&bytes).unwrap();
    assert_eq!(read.id, 99);
    assert_eq!(
        (read.destination.clone(), read.event_type.as_str()),
        (Destination::Alerts, "incident.opened")
    );
    assert_eq!(read.payload, new.payload, "the same bytes as a new alert's");
    assert_eq!(
        (
            read.next_attempt_at,
            read.attempts,
            read.last_error.as_deref()
        ),
        (t0() + minutes(3), 2, Some("receiver answered 503"))
    );

    // In the tree, it is indexed at open and served like any message; a failed
    // attempt rewrites it in the current encoding.
    store.outbox.insert(keys::id_key(99), bytes).unwrap();
    store.durable().await.unwrap();
    store.shutdown().await.unwrap();
    drop(store);
    let store = open(&dir);
    assert_eq!(store.next_outbox_due().unwrap(), Some(t0()));
    let due = store.due_outbox(t0() + minutes(3), 10).unwrap();
    assert_eq!(due, [new, read.clone()]);
    let mut retried = read;
    retried.attempts = 3;
    store.update_outbox(&retried).unwrap();
    let stored = store.outbox.get(keys::id_key(99)).unwrap().unwrap();
    assert_eq!(
        keys::decode::<crate::store::OutboxMessage>(OUTBOX, &stored).unwrap(),
        retried
    );
    store.shutdown().await.unwrap();
}

#[test]
fn an_unreadable_record_reports_the_current_formats_error() {
    let error = decode_message(&keys::encode(OUTBOX, &json!({ "id": 1 })).unwrap()).unwrap_err();
    match error {
        StoreError::Corrupt { tree, detail } => {
            assert_eq!(tree, OUTBOX);
            assert!(detail.contains("destination"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
}
