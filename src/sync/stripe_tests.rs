//! The Stripe sync against a scripted Stripe (objects, an event log, failures on
//! demand) and a real sled store in a temp dir: backfill equals the source and resumes
//! after a rate limit, out-of-order and repeated events end at the newest state,
//! same-second doubts are re-fetched, deletions stay deleted, and missed events are
//! caught up from the Events API.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::{json, Value};

use super::*;
use crate::clock::ManualClock;
use crate::domain::stripe::{ObjectQuery, StripeCredentials};
use crate::domain::{AccountId, InboxEntry, ProviderKind};
use crate::providers::stripe::wire::{EventData, List};
use crate::providers::stripe::ListRequest;
use crate::store::{SledStore, SledStoreConfig};

/// Stripe's clock in these tests (unix seconds).
const NOW: i64 = 1_800_000_000;

#[derive(Default)]
struct Source {
    objects: BTreeMap<(ObjectType, String), Value>,
    events: Vec<Event>,
}

/// A scripted Stripe: what it holds, failures to answer with, calls counted.
#[derive(Default)]
struct FakeStripe {
    source: Mutex<Source>,
    failures: Mutex<VecDeque<ProviderError>>,
    lists: AtomicU64,
    /// The list call (1-based) that answers 429 once.
    fail_list_call: Mutex<Option<u64>>,
    retrieves: AtomicU64,
    event_lists: AtomicU64,
    /// The lower bounds of the windows listed.
    windows: Mutex<std::collections::BTreeSet<i64>>,
}

fn object(object_type: ObjectType, id: &str, created: i64, version: u32) -> Value {
    json!({"id": id, "object": object_type.object_name(), "created": created, "v": version})
}

impl FakeStripe {
    fn put(&self, object_type: ObjectType, value: Value) {
        let id = value["id"].as_str().unwrap().to_owned();
        self.source
            .lock()
            .unwrap()
            .objects
            .insert((object_type, id), value);
    }

    fn remove(&self, object_type: ObjectType, id: &str) {
        self.source
            .lock()
            .unwrap()
            .objects
            .remove(&(object_type, id.to_owned()));
    }

    fn log(&self, event: Event) {
        self.source.lock().unwrap().events.push(event);
    }

    fn fail_next(&self, error: ProviderError) {
        self.failures.lock().unwrap().push_back(error);
    }

    fn failure(&self) -> Result<(), ProviderError> {
        match self.failures.lock().unwrap().pop_front() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn current(&self, object_type: ObjectType) -> BTreeMap<String, Value> {
        self.source
            .lock()
            .unwrap()
            .objects
            .iter()
            .filter(|((t, _), _)| *t == object_type)
            .map(|((_, id), v)| (id.clone(), v.clone()))
            .collect()
    }
}

fn page<T: Clone>(
    items: Vec<T>,
    id_of: impl Fn(&T) -> String,
    after: Option<&str>,
    limit: u32,
) -> List<T> {
    let start = match after {
        Some(after) => items
            .iter()
            .position(|i| id_of(i) == after)
            .map_or(items.len(), |p| p + 1),
        None => 0,
    };
    let rest = &items[start.min(items.len())..];
    let take = (limit as usize).min(rest.len());
    List {
        object: "list".into(),
        data: rest[..take].to_vec(),
        has_more: rest.len() > take,
        url: "/v1/x".into(),
    }
}

fn fetched<T>(value: T) -> Fetched<T> {
    Fetched {
        value,
        server_time: Some(NOW),
    }
}

#[async_trait]
impl StripeApi for FakeStripe {
    async fn list(
        &self,
        _access: StripeAccess<'_>,
        object_type: ObjectType,
        request: ListRequest<'_>,
    ) -> Result<Fetched<List<Value>>, ProviderError> {
        let call = self.lists.fetch_add(1, Ordering::Relaxed) + 1;
        self.windows.lock().unwrap().insert(request.window.gte);
        if *self.fail_list_call.lock().unwrap() == Some(call) {
            return Err(rate_limited());
        }
        self.failure()?;
        let mut items: Vec<Value> = self
            .current(object_type)
            .into_values()
            .filter(|o| {
                let created = o["created"].as_i64().unwrap();
                created >= request.window.gte && created < request.window.lt
            })
            .collect();
        items.sort_by(|a, b| {
            (b["created"].as_i64(), b["id"].as_str())
                .cmp(&(a["created"].as_i64(), a["id"].as_str()))
        });
        Ok(fetched(page(
            items,
            |o| o["id"].as_str().unwrap().to_owned(),
            request.starting_after,
            request.limit,
        )))
    }

    async fn retrieve(
        &self,
        _access: StripeAccess<'_>,
        object_type: ObjectType,
        id: &str,
    ) -> Result<Fetched<Option<Value>>, ProviderError> {
        self.retrieves.fetch_add(1, Ordering::Relaxed);
        self.failure()?;
        Ok(fetched(self.current(object_type).remove(id)))
    }

    async fn events(
        &self,
        _access: StripeAccess<'_>,
        since: i64,
        starting_after: Option<&str>,
        limit: u32,
    ) -> Result<Fetched<List<Event>>, ProviderError> {
        self.event_lists.fetch_add(1, Ordering::Relaxed);
        self.failure()?;
        let mut events: Vec<Event> = self
            .source
            .lock()
            .unwrap()
            .events
            .iter()
            .filter(|e| e.created >= since)
            .cloned()
            .collect();
        events.sort_by(|a, b| (b.created, &b.id).cmp(&(a.created, &a.id)));
        Ok(fetched(page(
            events,
            |e| e.id.clone(),
            starting_after,
            limit,
        )))
    }

    async fn write(
        &self,
        _access: StripeAccess<'_>,
        _object_type: ObjectType,
        _id: Option<&str>,
        _params: &serde_json::Map<String, Value>,
        _idempotency_key: &str,
    ) -> Result<Fetched<Value>, ProviderError> {
        Err(no_writes())
    }
}

fn no_writes() -> ProviderError {
    ProviderError::Api {
        status: 400,
        error_type: "invalid_request_error".into(),
        code: "not_scripted".into(),
        message: "the scripted stripe takes no writes (pushes are tested against the sandbox)"
            .into(),
        request_id: None,
        class: crate::providers::ErrorClass::Permanent,
    }
}

fn event(id: &str, kind: &str, created: i64, object: Value) -> Event {
    Event {
        id: id.into(),
        object: "event".into(),
        account: None,
        api_version: Some("2024-06-20".into()),
        created,
        kind: kind.into(),
        data: EventData {
            object,
            previous_attributes: None,
        },
        livemode: false,
        pending_webhooks: 1,
        request: None,
    }
}

fn rate_limited() -> ProviderError {
    ProviderError::Api {
        status: 429,
        error_type: "invalid_request_error".into(),
        code: "rate_limit".into(),
        message: "slow down".into(),
        request_id: None,
        class: ErrorClass::RateLimited {
            retry_after: Some(Duration::from_millis(1)),
        },
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    stripe: FakeStripe,
    account: Account,
    params: StripeParams,
    clock: Arc<ManualClock>,
    progress: SyncProgress,
    seq: AtomicU64,
}

impl Harness {
    fn new(types: &[ObjectType]) -> Harness {
        let dir = tempfile::tempdir().expect("dir");
        let store: Arc<dyn Store> = SledStore::open(SledStoreConfig {
            data_dir: dir.path().join("data"),
            cache_capacity_bytes: 16 * 1024 * 1024,
            group_commit_window: Duration::ZERO,
        })
        .expect("store");
        let credentials = StripeCredentials {
            api_key: "sk_test_x".into(),
            webhook_secrets: vec!["whsec_x".into()],
        };
        let mut account = Account::new_linked(
            ProviderKind::Stripe,
            "acct_1".into(),
            credentials.to_token(),
            "owner".into(),
            Vec::new(),
            chrono::DateTime::from_timestamp(NOW, 0).unwrap(),
        );
        account.stripe = Some(StripeLink {
            types: types.to_vec(),
            ..default_link(false)
        });
        store.link_account(&account).expect("link");
        Harness {
            _dir: dir,
            store,
            stripe: FakeStripe::default(),
            account,
            params: StripeParams {
                page_size: 100,
                call_attempts: 1,
                retry_delay: Duration::from_millis(1),
                // One window at a time (exact page counts); the split tests widen it.
                backfill_parallel: 1,
                ..StripeParams::default()
            },
            clock: ManualClock::new(chrono::DateTime::from_timestamp(NOW, 0).unwrap()),
            progress: SyncProgress::default(),
            seq: AtomicU64::new(1),
        }
    }

    fn id(&self) -> &AccountId {
        &self.account.id
    }

    async fn sync_with(
        &self,
        events: Vec<Event>,
        force_catch_up: bool,
    ) -> Result<SyncReport, SyncError> {
        let entries: Vec<InboxEntry> = events
            .into_iter()
            .map(|e| InboxEntry {
                seq: self.seq.fetch_add(1, Ordering::Relaxed),
                account_id: self.account.id.clone(),
                provider: ProviderKind::Stripe,
                kind: e.kind.clone(),
                received_at: self.clock.now(),
                body: serde_json::to_value(&e).unwrap(),
            })
            .collect();
        let env = StripeEnv {
            api: &self.stripe,
            store: &self.store,
            params: &self.params,
            progress: &self.progress,
            clock: self.clock.as_ref(),
            force_catch_up,
            metrics: None,
        };
        run_sync(&env, &self.account, &entries, Vec::new()).await
    }

    fn local(&self, object_type: ObjectType) -> BTreeMap<String, Value> {
        let mut all = BTreeMap::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .list_objects(&ObjectQuery {
                    account_id: self.id().clone(),
                    object_type,
                    after: after.clone(),
                    limit: 500,
                })
                .expect("list");
            for o in page.objects {
                all.insert(o.id.clone(), o.body.expect("live"));
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return all,
            }
        }
    }

    fn state(&self) -> StripeState {
        self.store
            .stripe_state(self.id())
            .expect("state")
            .expect("synced once")
    }
}

#[tokio::test]
async fn a_backfill_copies_every_type_exactly_and_makes_it_visible() {
    let h = Harness::new(&[ObjectType::Products, ObjectType::Prices]);
    for n in 0..250 {
        // Several objects per second, as at a busy account.
        h.stripe.put(
            ObjectType::Products,
            object(
                ObjectType::Products,
                &format!("prod_{n:03}"),
                NOW - 10_000 + n / 3,
                1,
            ),
        );
    }
    for n in 0..120 {
        h.stripe.put(
            ObjectType::Prices,
            object(
                ObjectType::Prices,
                &format!("price_{n:03}"),
                NOW - 5_000 + n,
                1,
            ),
        );
    }
    h.sync_with(Vec::new(), false).await.expect("sync");
    assert_eq!(
        h.local(ObjectType::Products),
        h.stripe.current(ObjectType::Products)
    );
    assert_eq!(
        h.local(ObjectType::Prices),
        h.stripe.current(ObjectType::Prices)
    );
    let state = h.state();
    assert!(state.is_visible(ObjectType::Products) && state.is_visible(ObjectType::Prices));
    assert_eq!(state.backfill[&ObjectType::Products].pages, 3);
    assert_eq!(
        h.stripe.lists.load(Ordering::Relaxed),
        5,
        "3 pages of products, 2 of prices"
    );
}

#[tokio::test]
async fn a_rate_limited_backfill_resumes_after_the_last_page_it_committed() {
    let h = Harness::new(&[ObjectType::Customers]);
    for n in 0..450 {
        h.stripe.put(
            ObjectType::Customers,
            object(
                ObjectType::Customers,
                &format!("cus_{n:03}"),
                NOW - 9_000 + n,
                1,
            ),
        );
    }
    // Two pages go through, the third is refused (call_attempts = 1: the sync fails).
    *h.stripe.fail_list_call.lock().unwrap() = Some(3);
    let result = h.sync_with(Vec::new(), false).await;
    assert!(
        matches!(result, Err(SyncError::Provider(ref e)) if e.code() == "rate_limit"),
        "{result:?}"
    );
    let state = h.state();
    let progress = &state.backfill[&ObjectType::Customers];
    assert_eq!(
        (progress.pages, progress.objects, progress.done),
        (2, 200, false)
    );
    assert!(
        !state.is_visible(ObjectType::Customers),
        "not visible before the backfill completes"
    );
    assert_eq!(
        h.store
            .count_objects(h.id(), ObjectType::Customers)
            .unwrap(),
        200,
        "the pages before the 429 are kept"
    );

    h.sync_with(Vec::new(), false).await.expect("resumed");
    assert_eq!(
        h.local(ObjectType::Customers),
        h.stripe.current(ObjectType::Customers)
    );
    assert_eq!(
        h.stripe.lists.load(Ordering::Relaxed),
        3 + 3,
        "resumed at page 3, not from the start"
    );
    assert_eq!(h.state().backfill[&ObjectType::Customers].pages, 5);
    assert!(h.state().is_visible(ObjectType::Customers));
}

/// 3,000 customers, one every 10 seconds.
fn dense(h: &Harness) {
    for n in 0..3000 {
        h.stripe.put(
            ObjectType::Customers,
            object(
                ObjectType::Customers,
                &format!("cus_{n:04}"),
                NOW - 40_000 + n * 10,
                1,
            ),
        );
    }
}

#[tokio::test]
async fn a_dense_type_is_split_into_windows_listed_side_by_side_without_overlap() {
    let mut h = Harness::new(&[ObjectType::Customers]);
    h.params.backfill_parallel = 4;
    dense(&h);
    h.sync_with(Vec::new(), false).await.expect("sync");
    assert_eq!(
        h.local(ObjectType::Customers),
        h.stripe.current(ObjectType::Customers)
    );
    let progress = &h.state().backfill[&ObjectType::Customers];
    // Every object listed exactly once: no two windows overlap.
    assert_eq!(progress.objects, 3000);
    let windows = h.stripe.windows.lock().unwrap().len();
    assert!(
        windows >= 3,
        "the window was split: {windows} windows listed"
    );
    // 30 pages of objects, and at most one empty listing (the oldest window).
    let calls = h.stripe.lists.load(Ordering::Relaxed);
    assert!((30..=32).contains(&calls), "{calls} list calls");
    assert!(progress.done && progress.windows.is_empty());
}

#[tokio::test]
async fn a_round_cut_by_a_rate_limit_keeps_its_pages_and_resumes_every_window() {
    let mut h = Harness::new(&[ObjectType::Customers]);
    h.params.backfill_parallel = 4;
    dense(&h);
    // Rounds of 1, 2, 3… windows as the type splits: the fifth list call, in the middle
    // of the third round, is refused.
    *h.stripe.fail_list_call.lock().unwrap() = Some(5);
    let result = h.sync_with(Vec::new(), false).await;
    assert!(
        matches!(result, Err(SyncError::Provider(ref e)) if e.code() == "rate_limit"),
        "{result:?}"
    );
    let state = h.state();
    let progress = &state.backfill[&ObjectType::Customers];
    // Every page that came is committed, the other windows' pages of the cut round too.
    let calls = h.stripe.lists.load(Ordering::Relaxed);
    assert!(
        calls > 5,
        "the round went on past the refused call: {calls}"
    );
    assert_eq!(
        progress.pages,
        calls - 1,
        "the pages that came are committed"
    );
    assert_eq!(
        h.store
            .count_objects(h.id(), ObjectType::Customers)
            .unwrap(),
        progress.objects
    );
    assert!(progress.windows.len() > 1, "{:?}", progress.windows);
    h.sync_with(Vec::new(), false).await.expect("resumed");
    assert_eq!(
        h.local(ObjectType::Customers),
        h.stripe.current(ObjectType::Customers)
    );
    assert_eq!(
        h.state().backfill[&ObjectType::Customers].objects,
        3000,
        "nothing listed twice across the cut"
    );
}

#[test]
fn a_cursor_stored_before_windows_carried_their_own_moves_into_the_first() {
    let legacy = json!({
        "done": false, "started_at": 100, "windows": [{"gte": 1, "lt": 50}, {"gte": 50, "lt": 101}],
        "starting_after": "cus_9", "pages": 3, "objects": 300
    });
    let mut backfill: TypeBackfill = serde_json::from_value(legacy).expect("old state reads");
    backfill.normalize();
    assert_eq!(backfill.windows[0].after.as_deref(), Some("cus_9"));
    assert_eq!(backfill.windows[1].after, None);
    assert_eq!(backfill.starting_after, None);
    let written = serde_json::to_value(&backfill).expect("json");
    assert!(written.get("starting_after").is_none(), "{written}");
}

#[tokio::test]
async fn a_rate_limit_within_the_attempts_is_waited_out_in_place() {
    let mut h = Harness::new(&[ObjectType::Products]);
    h.params.call_attempts = 3;
    for n in 0..150 {
        h.stripe.put(
            ObjectType::Products,
            object(
                ObjectType::Products,
                &format!("prod_{n:03}"),
                NOW - 500 + n,
                1,
            ),
        );
    }
    h.stripe.fail_next(rate_limited());
    h.stripe.fail_next(rate_limited());
    h.sync_with(Vec::new(), false).await.expect("sync");
    assert_eq!(
        h.local(ObjectType::Products),
        h.stripe.current(ObjectType::Products)
    );
    assert_eq!(
        h.stripe.lists.load(Ordering::Relaxed),
        2 + 2,
        "two refused tries, then two pages"
    );
}

#[tokio::test]
async fn out_of_order_and_repeated_events_end_at_the_newest_state() {
    let h = Harness::new(&[ObjectType::Products]);
    h.sync_with(Vec::new(), false)
        .await
        .expect("empty backfill");
    let v = |n: u32, created: i64| {
        event(
            &format!("evt_{n}"),
            "product.updated",
            created,
            object(ObjectType::Products, "prod_a", NOW - 100, n),
        )
    };
    // Delivered newest first, with repeats, over two syncs.
    h.sync_with(vec![v(3, NOW + 30), v(1, NOW + 10), v(3, NOW + 30)], false)
        .await
        .expect("first");
    h.sync_with(vec![v(2, NOW + 20), v(1, NOW + 10)], false)
        .await
        .expect("second");
    let local = h.local(ObjectType::Products);
    assert_eq!(
        local["prod_a"]["v"], 3,
        "the newest event wins whatever the delivery order"
    );
    let state = h.state();
    assert_eq!(state.events_applied, 1);
    assert_eq!(state.events_stale, 4);
    assert_eq!(
        state.last_event.as_ref().map(|m| m.id.as_str()),
        Some("evt_3")
    );
    let stored = h
        .store
        .get_object(h.id(), ObjectType::Products, "prod_a")
        .unwrap()
        .unwrap();
    assert_eq!(stored.version, 1, "written once");
}

#[tokio::test]
async fn same_second_events_are_refetched_where_order_matters_only() {
    let mut h = Harness::new(&[ObjectType::Subscriptions, ObjectType::Products]);
    // Products left out of refetch_on_tie: their ties take the last event delivered.
    if let Some(link) = h.account.stripe.as_mut() {
        link.refetch_on_tie = vec![ObjectType::Subscriptions];
    }
    h.sync_with(Vec::new(), false)
        .await
        .expect("empty backfill");
    // Stripe now says v9 for the subscription; two events in one second disagree.
    h.stripe.put(
        ObjectType::Subscriptions,
        object(ObjectType::Subscriptions, "sub_1", NOW - 50, 9),
    );
    let sub = |id: &str, v: u32| {
        event(
            id,
            "customer.subscription.updated",
            NOW + 5,
            object(ObjectType::Subscriptions, "sub_1", NOW - 50, v),
        )
    };
    let prod = |id: &str, v: u32| {
        event(
            id,
            "product.updated",
            NOW + 5,
            object(ObjectType::Products, "prod_1", NOW - 50, v),
        )
    };
    h.sync_with(
        vec![
            sub("evt_b", 2),
            sub("evt_a", 1),
            prod("evt_d", 2),
            prod("evt_c", 1),
        ],
        false,
    )
    .await
    .expect("sync");
    assert_eq!(
        h.local(ObjectType::Subscriptions)["sub_1"]["v"],
        9,
        "re-fetched: what Stripe says now"
    );
    assert_eq!(
        h.stripe.retrieves.load(Ordering::Relaxed),
        1,
        "only the subscription is re-fetched"
    );
    assert!(h.local(ObjectType::Products).contains_key("prod_1"));
    assert_eq!(h.state().refetches, 1);

    // A later event in the same second as the re-fetch is a tie again: re-fetched again.
    h.stripe.put(
        ObjectType::Subscriptions,
        object(ObjectType::Subscriptions, "sub_1", NOW - 50, 10),
    );
    h.sync_with(vec![sub("evt_e", 4)], false)
        .await
        .expect("tie with the fetch");
    assert_eq!(h.local(ObjectType::Subscriptions)["sub_1"]["v"], 10);
    assert_eq!(h.stripe.retrieves.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_deletion_stays_deleted_and_a_missing_refetch_deletes() {
    let h = Harness::new(&[ObjectType::Products, ObjectType::Invoices]);
    h.stripe.put(
        ObjectType::Products,
        object(ObjectType::Products, "prod_x", NOW - 100, 1),
    );
    h.stripe.put(
        ObjectType::Invoices,
        object(ObjectType::Invoices, "in_x", NOW - 100, 1),
    );
    h.sync_with(Vec::new(), false).await.expect("backfill");
    assert_eq!(h.local(ObjectType::Products).len(), 1);
    let deleted = event(
        "evt_del",
        "product.deleted",
        NOW + 20,
        json!({"id": "prod_x", "object": "product", "deleted": true}),
    );
    let late = event(
        "evt_old",
        "product.updated",
        NOW + 10,
        object(ObjectType::Products, "prod_x", NOW - 100, 2),
    );
    h.sync_with(vec![deleted], false).await.expect("delete");
    h.sync_with(vec![late], false).await.expect("late update");
    assert!(
        h.local(ObjectType::Products).is_empty(),
        "a late, older update does not bring it back"
    );
    assert!(h
        .store
        .get_object(h.id(), ObjectType::Products, "prod_x")
        .unwrap()
        .unwrap()
        .is_deleted());

    // An invoice doubt whose re-fetch finds nothing: deleted.
    h.stripe.remove(ObjectType::Invoices, "in_x");
    let inv = |id: &str| {
        event(
            id,
            "invoice.updated",
            NOW + 30,
            object(ObjectType::Invoices, "in_x", NOW - 100, 5),
        )
    };
    h.sync_with(vec![inv("evt_i1"), inv("evt_i2")], false)
        .await
        .expect("doubt");
    assert!(h.local(ObjectType::Invoices).is_empty());
}

#[tokio::test]
async fn missed_events_are_caught_up_from_the_events_api() {
    let h = Harness::new(&[ObjectType::Customers]);
    h.stripe.put(
        ObjectType::Customers,
        object(ObjectType::Customers, "cus_1", NOW - 100, 1),
    );
    h.sync_with(Vec::new(), false).await.expect("backfill");
    // Events whose webhooks never came: an update and a new customer.
    let updated = object(ObjectType::Customers, "cus_1", NOW - 100, 2);
    let created = object(ObjectType::Customers, "cus_2", NOW + 40, 1);
    h.stripe.put(ObjectType::Customers, updated.clone());
    h.stripe.put(ObjectType::Customers, created.clone());
    h.stripe
        .log(event("evt_u", "customer.updated", NOW + 30, updated));
    h.stripe
        .log(event("evt_c", "customer.created", NOW + 40, created));
    // Not due yet: the last catch-up (the backfill's start) is recent.
    h.sync_with(Vec::new(), false).await.expect("no catch-up");
    assert_eq!(h.local(ObjectType::Customers).len(), 1);
    // After a restart (or a failed sync) it is forced.
    h.sync_with(Vec::new(), true).await.expect("catch-up");
    assert_eq!(
        h.local(ObjectType::Customers),
        h.stripe.current(ObjectType::Customers)
    );
    assert_eq!(h.state().catch_ups, 1);
    assert_eq!(h.state().events_checked_through, Some(NOW));
}

#[tokio::test]
async fn past_the_event_retention_every_type_is_backfilled_again() {
    let h = Harness::new(&[ObjectType::Payouts]);
    h.stripe.put(
        ObjectType::Payouts,
        object(ObjectType::Payouts, "po_1", NOW - 100, 1),
    );
    h.sync_with(Vec::new(), false).await.expect("backfill");
    h.stripe.put(
        ObjectType::Payouts,
        object(ObjectType::Payouts, "po_2", NOW - 50, 1),
    );
    h.clock.advance(Duration::from_secs(31 * 24 * 3600));
    h.sync_with(Vec::new(), false).await.expect("re-backfill");
    assert_eq!(
        h.local(ObjectType::Payouts),
        h.stripe.current(ObjectType::Payouts)
    );
    // Listed again by the new backfill, then by the drift check that came due in the
    // same 31 days (it is what removes what vanished meanwhile without an event).
    assert_eq!(h.stripe.lists.load(Ordering::Relaxed), 3);
    assert!(h.state().drift.is_some());
}

#[tokio::test]
async fn a_drift_check_repairs_what_changed_without_an_event_and_nothing_newer() {
    let mut h = Harness::new(&[ObjectType::Products]);
    h.params.drift_interval = Duration::from_secs(3600);
    for n in 0..5 {
        h.stripe.put(
            ObjectType::Products,
            object(ObjectType::Products, &format!("prod_{n}"), NOW - 100 + n, 1),
        );
    }
    h.sync_with(Vec::new(), false).await.expect("backfill");
    let due = h
        .state()
        .next_drift_check
        .expect("scheduled once every type is visible");
    assert_eq!(due.timestamp(), NOW + 3600);
    // Behind acctor's back: one changed, one deleted, one created; and one changed by an
    // event acctor applied after Stripe's listing time (newer than the check's listing).
    h.stripe.put(
        ObjectType::Products,
        object(ObjectType::Products, "prod_0", NOW - 100, 2),
    );
    h.stripe.remove(ObjectType::Products, "prod_1");
    h.stripe.put(
        ObjectType::Products,
        object(ObjectType::Products, "prod_9", NOW - 10, 1),
    );
    h.sync_with(
        vec![event(
            "evt_new",
            "product.updated",
            NOW + 7200,
            object(ObjectType::Products, "prod_2", NOW - 98, 5),
        )],
        false,
    )
    .await
    .expect("event");
    // Not due yet: nothing checked.
    assert!(h.state().drift.is_none());
    h.clock.advance(Duration::from_secs(3600));
    h.sync_with(Vec::new(), false).await.expect("drift check");
    let report = h.state().drift.expect("a report");
    assert_eq!(report.repaired[&ObjectType::Products], 2, "{report:?}");
    assert_eq!(report.removed[&ObjectType::Products], 1, "{report:?}");
    assert!(report.ids.contains(&"products/prod_1".to_string()));
    let local = h.local(ObjectType::Products);
    assert_eq!(local["prod_0"]["v"], 2);
    assert_eq!(local["prod_2"]["v"], 5, "the newer event's state is kept");
    assert!(!local.contains_key("prod_1"));
    assert!(local.contains_key("prod_9"));
    assert_eq!(h.state().next_drift_check.unwrap().timestamp(), NOW + 7200);
}
