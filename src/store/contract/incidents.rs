//! Incidents: one open per (account, kind), refreshed rather than doubled, resolved
//! once, listed newest first with filters and pages; opening and resolving with
//! `notify` enqueue their alert in the outbox, with the incident event's exact body.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;

use super::{contract_tests, Fixture};
use crate::domain::incidents::{
    Incident, IncidentKind, IncidentQuery, IncidentState, OpenIncident,
};
use crate::domain::AccountId;
use crate::store::Destination;

contract_tests! {
    opening_twice_refreshes_the_one_open_incident_and_resolving_closes_it,
    alerts_carry_the_incident_events_exact_body,
    without_notify_no_alert_is_enqueued,
    listing_filters_and_pages_newest_first_and_survives_reopen,
}

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, minute, 0)
        .single()
        .expect("valid time")
}

fn open(account: &str, kind: IncidentKind, minute: u32, notify: bool) -> OpenIncident {
    OpenIncident {
        account_id: AccountId(account.to_string()),
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
        .open_incident_of(&AccountId("acc_a".into()), IncidentKind::NeedsReauth)
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
        .resolve_incident(
            &AccountId("acc_a".into()),
            IncidentKind::NeedsReauth,
            at(4),
            true,
        )
        .expect("resolve")
        .expect("was open");
    assert_eq!(resolved.id, first.id);
    assert_eq!(resolved.resolved_at, Some(at(4)));
    assert!(!resolved.is_open());
    assert!(store
        .open_incident_of(&AccountId("acc_a".into()), IncidentKind::NeedsReauth)
        .expect("open_incident_of")
        .is_none());
    assert!(store
        .resolve_incident(
            &AccountId("acc_a".into()),
            IncidentKind::NeedsReauth,
            at(5),
            true
        )
        .expect("resolve again")
        .is_none());
    let alerts = store.pending_outbox(10).expect("outbox");
    assert_eq!(alerts.len(), 2, "opened + resolved");
    // The other kind and the other account were not touched.
    assert!(store
        .open_incident_of(&AccountId("acc_a".into()), IncidentKind::SyncFailed)
        .expect("open_incident_of")
        .is_some());
    assert!(store
        .open_incident_of(&AccountId("acc_b".into()), IncidentKind::NeedsReauth)
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
            account_id: AccountId("acc_a".into()),
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
        .resolve_incident(&opened.account_id, opened.kind, at(7), true)
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
        .resolve_incident(&opened.account_id, opened.kind, at(2), false)
        .unwrap()
        .expect("was open");
    assert!(store.pending_outbox(10).unwrap().is_empty());
    assert_eq!(store.next_outbox_due().unwrap(), None);
    // Resolving with notify what is not open enqueues nothing either.
    assert!(store
        .resolve_incident(&opened.account_id, opened.kind, at(3), true)
        .unwrap()
        .is_none());
    assert!(store.pending_outbox(10).unwrap().is_empty());
    // Opened quietly, resolved loudly: only the resolution is news.
    store
        .open_incident(&open("acc_b", IncidentKind::SyncFailed, 4, false))
        .unwrap();
    store
        .resolve_incident(
            &AccountId("acc_b".into()),
            IncidentKind::SyncFailed,
            at(5),
            true,
        )
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
        .resolve_incident(
            &AccountId("acc_b".into()),
            IncidentKind::PendingExpiration,
            at(9),
            false,
        )
        .expect("resolve");
    let list = |q: IncidentQuery| store.list_incidents(&q).expect("list");
    let all = list(IncidentQuery {
        limit: 10,
        ..Default::default()
    });
    let accounts: Vec<&str> = all.iter().map(|i| i.account_id.as_str()).collect();
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
    assert_eq!(resolved[0].account_id.as_str(), "acc_b");
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
