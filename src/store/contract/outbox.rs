//! The outbox as the sender sees it: due reads earliest due first, a failed attempt
//! moving a message back, removal, and a concurrent removal winning over an update.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;

use super::{contract_tests, Fixture};
use crate::domain::incidents::{IncidentKind, OpenIncident};
use crate::domain::AccountId;
use crate::store::{OutboxMessage, Store};

contract_tests! {
    due_messages_come_earliest_due_first_and_the_index_follows_every_change,
    an_update_of_a_removed_message_does_not_bring_it_back,
    undelivered_messages_survive_reopen,
}

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, minute, 0)
        .single()
        .expect("valid time")
}

/// Opens an incident with `notify` for each account at minute 1: one alert each.
fn alerts_for(store: &dyn Store, accounts: &[&str]) -> Vec<OutboxMessage> {
    for account in accounts {
        store
            .open_incident(&OpenIncident {
                subject: AccountId(account.to_string()).into(),
                kind: IncidentKind::NeedsReauth,
                details: json!({}),
                at: at(1),
                notify: true,
            })
            .expect("open");
    }
    store.pending_outbox(100).expect("outbox")
}

fn due_messages_come_earliest_due_first_and_the_index_follows_every_change(f: &mut Fixture) {
    let store = f.store().as_ref();
    let mut alerts = alerts_for(store, &["acc_0", "acc_1", "acc_2"]);
    assert_eq!(alerts.len(), 3);
    assert!(alerts.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
    assert_eq!(store.pending_outbox(2).expect("outbox").len(), 2, "limit");
    assert_eq!(store.due_outbox(at(0), 10).expect("due"), []);
    assert_eq!(store.due_outbox(at(1), 10).expect("due"), alerts);
    assert_eq!(store.next_outbox_due().expect("next"), Some(at(1)));
    // The oldest fails and waits: the younger ones come first, then it.
    alerts[0].next_attempt_at = at(5);
    alerts[0].attempts = 1;
    alerts[0].last_error = Some("receiver answered 503".into());
    store.update_outbox(&alerts[0]).expect("update");
    let due: Vec<u64> = store
        .due_outbox(at(1), 10)
        .expect("due")
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(due, [alerts[1].id, alerts[2].id]);
    assert_eq!(store.due_outbox(at(1), 1).expect("due").len(), 1);
    // Due or not, it is still pending, as updated.
    assert_eq!(store.pending_outbox(10).expect("outbox"), alerts);
    store.remove_outbox(alerts[1].id).expect("remove");
    store.remove_outbox(alerts[2].id).expect("remove");
    assert_eq!(store.due_outbox(at(4), 10).expect("due"), []);
    assert_eq!(store.next_outbox_due().expect("next"), Some(at(5)));
    assert_eq!(
        store.due_outbox(at(5), 10).expect("due"),
        [alerts[0].clone()]
    );
    store.remove_outbox(alerts[0].id).expect("remove");
    assert_eq!(store.next_outbox_due().expect("next"), None);
    assert!(store.pending_outbox(10).expect("outbox").is_empty());
    // Removing what is gone is fine.
    store.remove_outbox(alerts[0].id).expect("remove again");
}

fn an_update_of_a_removed_message_does_not_bring_it_back(f: &mut Fixture) {
    let store = f.store().as_ref();
    let mut alerts = alerts_for(store, &["acc_0", "acc_1"]);
    store.remove_outbox(alerts[0].id).expect("remove");
    // The sender's failed attempt lands after a concurrent removal: it must not win.
    alerts[0].attempts = 1;
    alerts[0].next_attempt_at = at(3);
    store.update_outbox(&alerts[0]).expect("update");
    assert_eq!(
        store.pending_outbox(10).expect("outbox"),
        [alerts[1].clone()]
    );
    assert_eq!(
        store.due_outbox(at(59), 10).expect("due"),
        [alerts[1].clone()]
    );
    assert_eq!(store.next_outbox_due().expect("next"), Some(at(1)));
}

fn undelivered_messages_survive_reopen(f: &mut Fixture) {
    let mut alerts = alerts_for(f.store().as_ref(), &["acc_0", "acc_1"]);
    alerts[0].next_attempt_at = at(5);
    alerts[0].attempts = 2;
    f.store().update_outbox(&alerts[0]).expect("update");
    f.durable();
    f.reopen();
    let store = f.store();
    assert_eq!(store.pending_outbox(10).expect("outbox"), alerts);
    assert_eq!(
        store.due_outbox(at(1), 10).expect("due"),
        [alerts[1].clone()]
    );
    assert_eq!(store.next_outbox_due().expect("next"), Some(at(1)));
    assert_eq!(
        store.due_outbox(at(5), 10).expect("due"),
        [alerts[1].clone(), alerts[0].clone()]
    );
}
