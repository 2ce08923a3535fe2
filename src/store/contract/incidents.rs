//! Incidents: one open per (subject, kind), the subject an account or an operation,
//! refreshed rather than doubled, resolved once, listed newest first with filters and
//! pages; opening and resolving with `notify` enqueue their alert in the outbox, with
//! the incident event's exact body.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;

use super::{contract_tests, Fixture};
use crate::domain::incidents::{
    Incident, IncidentKind, IncidentQuery, IncidentState, IncidentSubject, OpenIncident,
};
use crate::domain::operations::OperationId;
use crate::domain::AccountId;
use crate::store::Destination;

contract_tests! {
    opening_twice_refreshes_the_one_open_incident_and_resolving_closes_it,
    alerts_carry_the_incident_events_exact_body,
    without_notify_no_alert_is_enqueued,
    listing_filters_and_pages_newest_first_and_survives_reopen,
    operation_incidents_open_refresh_and_resolve_by_their_operation,
    an_account_and_an_operation_incident_of_one_kind_coexist,
    listing_filters_by_operation_and_the_open_index_survives_reopen,
    an_operation_incidents_alert_names_the_operation_and_no_account,
}

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, minute, 0)
        .single()
        .expect("valid time")
}

/// The subject of account `id`'s incidents.
fn acc(id: &str) -> IncidentSubject {
    IncidentSubject::Account(AccountId(id.to_string()))
}

/// The subject of operation `n`'s incidents (a canonical-looking id).
fn op(n: u32) -> IncidentSubject {
    IncidentSubject::Operation(op_id(n))
}

fn op_id(n: u32) -> OperationId {
    OperationId(format!("op_{n:032x}"))
}

/// A request to open (or refresh) `subject`'s incident of `kind` at `minute`.
fn open_about(
    subject: IncidentSubject,
    kind: IncidentKind,
    minute: u32,
    notify: bool,
) -> OpenIncident {
    OpenIncident {
        subject,
        kind,
        details: json!({ "minute": minute }),
        at: at(minute),
        notify,
    }
}

fn open(account: &str, kind: IncidentKind, minute: u32, notify: bool) -> OpenIncident {
    OpenIncident {
        subject: acc(account),
        kind,
        details: json!({ "minute": minute }),
        at: at(minute),
        notify,
    }
}

/// The body the alert-only outbox sent and every alert keeps: `{"type","timestamp",
/// "data"}` in that order, the incident's fields in their declaration order.
fn event_body(event_type: &str, timestamp: DateTime<Utc>, incident: &Incident) -> String {
    format!(
        r#"{{"type":"{event_type}","timestamp":{},"data":{}}}"#,
        serde_json::to_string(&timestamp).unwrap(),
        serde_json::to_string(incident).unwrap()
    )
}

/// The account an account's incident is about.
fn account_of(incident: &Incident) -> &str {
    incident
        .account_id
        .as_ref()
        .expect("an account's incident")
        .as_str()
}

fn opening_twice_refreshes_the_one_open_incident_and_resolving_closes_it(f: &mut Fixture) {
    let store = f.store();
    let first = store
        .open_incident(&open("acc_a", IncidentKind::NeedsReauth, 1, true))
        .expect("open");
    assert_eq!(
        (first.opened_at, first.updated_at, first.occurrences),
        (at(1), at(1), 1)
    );
    assert!(first.is_open());
    let again = store
        .open_incident(&open("acc_a", IncidentKind::NeedsReauth, 2, true))
        .expect("open again");
    assert_eq!(first.id, again.id, "one open incident per (account, kind)");
    assert_eq!(again.occurrences, 2);
    assert_eq!(again.opened_at, at(1));
    assert_eq!(again.updated_at, at(2));
    assert_eq!(again.details, json!({ "minute": 2 }));
    // A refresh is not news: one alert for the opening only.
    assert_eq!(store.pending_outbox(10).expect("outbox").len(), 1);
    let open_now = store
        .open_incident_of(&acc("acc_a"), IncidentKind::NeedsReauth)
        .expect("open_incident_of")
        .expect("open");
    assert_eq!(open_now, again);
    assert_eq!(store.get_incident(first.id).expect("get"), Some(again));

    let other_kind = store
        .open_incident(&open("acc_a", IncidentKind::SyncFailed, 3, false))
        .expect("other kind");
    assert_ne!(other_kind.id, first.id);
    let other_account = store
        .open_incident(&open("acc_b", IncidentKind::NeedsReauth, 3, false))
        .expect("other account");
    assert_ne!(other_account.id, first.id);

    let resolved = store
        .resolve_incident(&acc("acc_a"), IncidentKind::NeedsReauth, at(4), true)
        .expect("resolve")
        .expect("was open");
    assert_eq!(resolved.id, first.id);
    assert_eq!(resolved.resolved_at, Some(at(4)));
    assert!(!resolved.is_open());
    assert!(store
        .open_incident_of(&acc("acc_a"), IncidentKind::NeedsReauth)
        .expect("open_incident_of")
        .is_none());
    assert!(store
        .resolve_incident(&acc("acc_a"), IncidentKind::NeedsReauth, at(5), true)
        .expect("resolve again")
        .is_none());
    let alerts = store.pending_outbox(10).expect("outbox");
    assert_eq!(alerts.len(), 2, "opened + resolved");
    // The other kind and the other account were not touched.
    assert!(store
        .open_incident_of(&acc("acc_a"), IncidentKind::SyncFailed)
        .expect("open_incident_of")
        .is_some());
    assert!(store
        .open_incident_of(&acc("acc_b"), IncidentKind::NeedsReauth)
        .expect("open_incident_of")
        .is_some());

    // Opening after resolving is a new incident.
    let reopened = store
        .open_incident(&open("acc_a", IncidentKind::NeedsReauth, 6, false))
        .expect("reopen");
    assert!(reopened.id > other_account.id);
    assert_eq!(reopened.occurrences, 1);
    assert_eq!(
        store
            .get_incident(first.id)
            .expect("get")
            .expect("kept")
            .resolved_at,
        Some(at(4))
    );
    assert_eq!(store.get_incident(u64::MAX).expect("get"), None);
}

fn alerts_carry_the_incident_events_exact_body(f: &mut Fixture) {
    let store = f.store();
    let opened = store
        .open_incident(&OpenIncident {
            subject: acc("acc_a"),
            kind: IncidentKind::NeedsReauth,
            // Keys out of order and floats: the body keeps them as the event has them.
            details: json!({ "code": "ITEM_LOGIN_REQUIRED", "z": 1, "a": [1.5, null] }),
            at: at(1),
            notify: true,
        })
        .unwrap();
    let alerts = store.pending_outbox(10).unwrap();
    assert_eq!(alerts.len(), 1);
    let message = &alerts[0];
    assert_eq!(message.destination, Destination::Alerts);
    assert_eq!(message.event_type, "incident.opened");
    assert_eq!(
        (
            message.created_at,
            message.next_attempt_at,
            message.attempts,
            message.last_error.as_deref()
        ),
        (at(1), at(1), 0, None)
    );
    assert_eq!(
        message.payload.as_str(),
        event_body("incident.opened", at(1), &opened)
    );

    let resolved = store
        .resolve_incident(&acc("acc_a"), opened.kind, at(7), true)
        .unwrap()
        .unwrap();
    let alerts = store.pending_outbox(10).unwrap();
    assert_eq!(alerts.len(), 2);
    let message = alerts
        .iter()
        .find(|m| m.event_type == "incident.resolved")
        .expect("a resolved alert");
    assert_eq!(message.destination, Destination::Alerts);
    assert_eq!(
        (
            message.created_at,
            message.next_attempt_at,
            message.attempts
        ),
        (at(7), at(7), 0)
    );
    assert_eq!(
        message.payload.as_str(),
        event_body("incident.resolved", at(7), &resolved)
    );
    // Due at once, oldest first.
    let due: Vec<_> = store
        .due_outbox(at(7), 10)
        .unwrap()
        .into_iter()
        .map(|m| m.event_type)
        .collect();
    assert_eq!(due, ["incident.opened", "incident.resolved"]);
    assert_eq!(store.next_outbox_due().unwrap(), Some(at(1)));
}

fn without_notify_no_alert_is_enqueued(f: &mut Fixture) {
    let store = f.store();
    let opened = store
        .open_incident(&open("acc_a", IncidentKind::Quarantined, 1, false))
        .unwrap();
    store
        .resolve_incident(&acc("acc_a"), opened.kind, at(2), false)
        .unwrap()
        .expect("was open");
    assert!(store.pending_outbox(10).unwrap().is_empty());
    assert_eq!(store.next_outbox_due().unwrap(), None);
    // Resolving with notify what is not open enqueues nothing either.
    assert!(store
        .resolve_incident(&acc("acc_a"), opened.kind, at(3), true)
        .unwrap()
        .is_none());
    assert!(store.pending_outbox(10).unwrap().is_empty());
    // Opened quietly, resolved loudly: only the resolution is news.
    store
        .open_incident(&open("acc_b", IncidentKind::SyncFailed, 4, false))
        .unwrap();
    store
        .resolve_incident(&acc("acc_b"), IncidentKind::SyncFailed, at(5), true)
        .unwrap()
        .expect("was open");
    let alerts = store.pending_outbox(10).unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].event_type, "incident.resolved");
}

fn listing_filters_and_pages_newest_first_and_survives_reopen(f: &mut Fixture) {
    let store = f.store();
    for (n, account) in ["acc_a", "acc_b", "acc_a", "acc_c"].iter().enumerate() {
        let kind = if n % 2 == 0 {
            IncidentKind::Quarantined
        } else {
            IncidentKind::PendingExpiration
        };
        // acc_a gets Quarantined twice: the second is a refresh, not a new one.
        store
            .open_incident(&open(account, kind, n as u32, false))
            .expect("open");
    }
    store
        .resolve_incident(&acc("acc_b"), IncidentKind::PendingExpiration, at(9), false)
        .expect("resolve");
    let list = |q: IncidentQuery| store.list_incidents(&q).expect("list");
    let all = list(IncidentQuery {
        limit: 10,
        ..Default::default()
    });
    let accounts: Vec<&str> = all.iter().map(account_of).collect();
    assert_eq!(accounts, ["acc_c", "acc_b", "acc_a"]);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let open_only = list(IncidentQuery {
        state: IncidentState::Open,
        limit: 10,
        ..Default::default()
    });
    assert_eq!(open_only.len(), 2);
    assert!(open_only.iter().all(|i| i.is_open()));
    assert!(open_only[0].id > open_only[1].id);
    let resolved = list(IncidentQuery {
        state: IncidentState::Resolved,
        limit: 10,
        ..Default::default()
    });
    assert_eq!(resolved.len(), 1);
    assert_eq!(account_of(&resolved[0]), "acc_b");
    let by_kind = list(IncidentQuery {
        kind: Some(IncidentKind::Quarantined),
        account_id: Some(AccountId("acc_a".into())),
        limit: 10,
        ..Default::default()
    });
    assert_eq!(by_kind.len(), 1);
    assert_eq!(by_kind[0].occurrences, 2);
    let page1 = list(IncidentQuery {
        limit: 2,
        ..Default::default()
    });
    let page2 = list(IncidentQuery {
        limit: 2,
        after: page1.last().map(|i| i.id),
        ..Default::default()
    });
    assert_eq!(page1.len(), 2);
    assert_eq!(page1.len() + page2.len(), 3);
    assert!(page2.iter().all(|i| i.id < page1[1].id));
    let since = list(IncidentQuery {
        since: Some(at(1)),
        limit: 10,
        ..Default::default()
    });
    assert_eq!(since.len(), 2, "acc_a was opened at minute 0");

    f.durable();
    f.reopen();
    let store = f.store();
    let listed = store
        .list_incidents(&IncidentQuery {
            limit: 10,
            ..Default::default()
        })
        .expect("list");
    assert_eq!(
        listed.iter().map(|i| i.id).collect::<Vec<_>>(),
        all.iter().map(|i| i.id).collect::<Vec<_>>()
    );
    // The open index survived too: opening again refreshes.
    let again = store
        .open_incident(&open("acc_c", IncidentKind::PendingExpiration, 20, false))
        .expect("open");
    assert_eq!(again.occurrences, 2);
}

fn operation_incidents_open_refresh_and_resolve_by_their_operation(f: &mut Fixture) {
    let store = f.store();
    let kind = IncidentKind::AccountOpeningWebhookNotReceived;
    let first = store
        .open_incident(&open_about(op(1), kind, 1, true))
        .expect("open");
    assert_eq!(first.operation_id, Some(op_id(1)));
    assert_eq!(first.account_id, None);
    assert_eq!(first.subject(), Some(op(1)));
    assert_eq!(first.severity, kind.severity());
    assert_eq!(
        (first.opened_at, first.updated_at, first.occurrences),
        (at(1), at(1), 1)
    );
    let again = store
        .open_incident(&open_about(op(1), kind, 2, true))
        .expect("refresh");
    assert_eq!(
        again.id, first.id,
        "one open incident per (operation, kind)"
    );
    assert_eq!((again.occurrences, again.updated_at), (2, at(2)));
    assert_eq!(again.details, json!({ "minute": 2 }));
    assert_eq!(store.pending_outbox(10).expect("outbox").len(), 1);
    assert_eq!(
        store.open_incident_of(&op(1), kind).expect("read"),
        Some(again.clone())
    );
    assert_eq!(store.get_incident(first.id).expect("get"), Some(again));

    // Another kind, another operation: incidents of their own.
    let other_kind = store
        .open_incident(&open_about(op(1), IncidentKind::OperationFailed, 3, false))
        .expect("other kind");
    let other_operation = store
        .open_incident(&open_about(op(2), kind, 3, false))
        .expect("other operation");
    assert_ne!(other_kind.id, first.id);
    assert_ne!(other_operation.id, first.id);

    let resolved = store
        .resolve_incident(&op(1), kind, at(4), true)
        .expect("resolve")
        .expect("was open");
    assert_eq!((resolved.id, resolved.resolved_at), (first.id, Some(at(4))));
    assert_eq!(resolved.operation_id, Some(op_id(1)));
    assert!(store
        .open_incident_of(&op(1), kind)
        .expect("read")
        .is_none());
    assert!(store
        .resolve_incident(&op(1), kind, at(5), true)
        .expect("resolve again")
        .is_none());
    assert_eq!(store.pending_outbox(10).expect("outbox").len(), 2);
    // Untouched.
    assert!(store
        .open_incident_of(&op(1), IncidentKind::OperationFailed)
        .expect("read")
        .is_some());
    assert!(store
        .open_incident_of(&op(2), kind)
        .expect("read")
        .is_some());
    // Opening after resolving is a new incident.
    let reopened = store
        .open_incident(&open_about(op(1), kind, 6, false))
        .expect("reopen");
    assert!(reopened.id > other_operation.id);
    assert_eq!(reopened.occurrences, 1);
}

fn an_account_and_an_operation_incident_of_one_kind_coexist(f: &mut Fixture) {
    let store = f.store();
    let kind = IncidentKind::OperationStepFailed;
    let about_account = store
        .open_incident(&open_about(acc("acc_a"), kind, 1, false))
        .expect("account's");
    let about_operation = store
        .open_incident(&open_about(op(1), kind, 2, false))
        .expect("operation's");
    assert_ne!(about_account.id, about_operation.id);
    assert_eq!(
        about_operation.occurrences, 1,
        "not a refresh of the account's"
    );
    assert_eq!(
        (
            about_account.account_id.clone(),
            about_account.operation_id.clone()
        ),
        (Some(AccountId("acc_a".into())), None)
    );
    assert_eq!(
        store
            .open_incident_of(&acc("acc_a"), kind)
            .expect("read")
            .map(|i| i.id),
        Some(about_account.id)
    );
    assert_eq!(
        store
            .open_incident_of(&op(1), kind)
            .expect("read")
            .map(|i| i.id),
        Some(about_operation.id)
    );
    // Resolving one leaves the other open.
    store
        .resolve_incident(&op(1), kind, at(3), false)
        .expect("resolve")
        .expect("was open");
    assert!(store
        .open_incident_of(&op(1), kind)
        .expect("read")
        .is_none());
    assert_eq!(
        store
            .open_incident_of(&acc("acc_a"), kind)
            .expect("read")
            .map(|i| (i.id, i.is_open())),
        Some((about_account.id, true))
    );
}

fn listing_filters_by_operation_and_the_open_index_survives_reopen(f: &mut Fixture) {
    let store = f.store();
    let mut opened = Vec::new();
    for (n, subject) in [op(1), acc("acc_a"), op(2), op(1)].into_iter().enumerate() {
        let kind = if n == 3 {
            IncidentKind::OperationStepFailed
        } else {
            IncidentKind::OperationFailed
        };
        opened.push(
            store
                .open_incident(&open_about(subject, kind, n as u32, false))
                .expect("open")
                .id,
        );
    }
    store
        .resolve_incident(&op(1), IncidentKind::OperationFailed, at(9), false)
        .expect("resolve")
        .expect("was open");
    let list = |q: IncidentQuery| {
        f.store()
            .list_incidents(&q)
            .expect("list")
            .into_iter()
            .map(|i| i.id)
            .collect::<Vec<_>>()
    };
    let of_op1 = IncidentQuery {
        operation_id: Some(op_id(1)),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(list(of_op1.clone()), [opened[3], opened[0]], "newest first");
    assert_eq!(
        list(IncidentQuery {
            state: IncidentState::Open,
            ..of_op1.clone()
        }),
        [opened[3]]
    );
    assert_eq!(
        list(IncidentQuery {
            state: IncidentState::Resolved,
            ..of_op1.clone()
        }),
        [opened[0]]
    );
    assert_eq!(
        list(IncidentQuery {
            kind: Some(IncidentKind::OperationFailed),
            ..of_op1.clone()
        }),
        [opened[0]]
    );
    assert_eq!(
        list(IncidentQuery {
            limit: 1,
            ..of_op1.clone()
        }),
        [opened[3]]
    );
    assert_eq!(
        list(IncidentQuery {
            after: Some(opened[3]),
            ..of_op1.clone()
        }),
        [opened[0]]
    );
    // An account filter finds no operation's incident, and an operation filter no
    // account's; an operation with none lists nothing.
    assert_eq!(
        list(IncidentQuery {
            account_id: Some(AccountId("acc_a".into())),
            limit: 10,
            ..Default::default()
        }),
        [opened[1]]
    );
    assert_eq!(
        list(IncidentQuery {
            operation_id: Some(op_id(3)),
            limit: 10,
            ..Default::default()
        }),
        Vec::<u64>::new()
    );
    // Unfiltered: every subject's, newest first.
    assert_eq!(
        list(IncidentQuery {
            limit: 10,
            ..Default::default()
        }),
        [opened[3], opened[2], opened[1], opened[0]]
    );

    f.durable();
    f.reopen();
    let store = f.store();
    assert_eq!(list_ids(store.as_ref(), &of_op1), [opened[3], opened[0]]);
    // The open index survived: opening again refreshes.
    let again = store
        .open_incident(&open_about(op(2), IncidentKind::OperationFailed, 20, false))
        .expect("open");
    assert_eq!((again.id, again.occurrences), (opened[2], 2));
}

fn list_ids(store: &dyn crate::store::Store, query: &IncidentQuery) -> Vec<u64> {
    store
        .list_incidents(query)
        .expect("list")
        .into_iter()
        .map(|i| i.id)
        .collect()
}

fn an_operation_incidents_alert_names_the_operation_and_no_account(f: &mut Fixture) {
    let store = f.store();
    let opened = store
        .open_incident(&OpenIncident {
            subject: op(1),
            kind: IncidentKind::AccountOpeningWebhookNotReceived,
            details: json!({ "operation": format!("/v1/operations/{}", op_id(1)) }),
            at: at(1),
            notify: true,
        })
        .expect("open");
    store
        .resolve_incident(&op(1), opened.kind, at(2), true)
        .expect("resolve")
        .expect("was open");
    let alerts = store.pending_outbox(10).expect("outbox");
    assert_eq!(alerts.len(), 2);
    for (message, event_type, minute) in [
        (&alerts[0], "incident.opened", 1),
        (&alerts[1], "incident.resolved", 2),
    ] {
        assert_eq!(message.destination, Destination::Alerts);
        assert_eq!(message.event_type, event_type);
        let body: serde_json::Value =
            serde_json::from_str(message.payload.as_str()).expect("json body");
        let data = &body["data"];
        assert_eq!(data["operation_id"], op_id(1).as_str(), "{body}");
        assert!(data.get("account_id").is_none(), "{body}");
        assert_eq!(data["kind"], "account_opening_webhook_not_received");
        assert_eq!(data["severity"], "critical");
        let incident: Incident = serde_json::from_value(data.clone()).expect("an incident");
        assert_eq!(
            message.payload.as_str(),
            event_body(event_type, at(minute), &incident)
        );
    }
}
