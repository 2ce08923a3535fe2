//! Runtime flags: a flag never set reads `None`; a set is read back and listed, and
//! recorded with the value it replaced, who, why and when; the history is newest first,
//! per flag and overall, and honours its limit; everything survives a reopen; and
//! concurrent sets of one flag all count, their changes forming one unbroken chain.

use chrono::{DateTime, TimeZone, Utc};

use super::{contract_tests, Fixture};
use crate::domain::flags::{Flag, FlagChange, FlagKey, FlagName};
use crate::domain::operations::Segment;

contract_tests! {
    an_unset_flag_reads_none_and_a_set_one_is_read_back_and_listed,
    history_is_newest_first_per_flag_and_overall_within_the_limit,
    flags_and_their_history_survive_reopen,
    concurrent_sets_of_one_flag_all_count_and_chain,
}

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, minute, 0)
        .single()
        .expect("valid time")
}

fn key(market: &str, segment: Segment) -> FlagKey {
    FlagKey {
        name: FlagName::AccountOpeningAsync,
        market: market.into(),
        segment,
    }
}

/// A change of `key` to `to` by `by` at `minute`; `from` is a lie the store ignores.
fn change(key: &FlagKey, to: bool, by: &str, reason: Option<&str>, minute: u32) -> FlagChange {
    FlagChange {
        key: key.clone(),
        from: Some(!to),
        to,
        by: by.into(),
        reason: reason.map(str::to_owned),
        at: at(minute),
    }
}

/// (market, from, to, by) of each change.
fn summary(changes: &[FlagChange]) -> Vec<(String, Option<bool>, bool, String)> {
    changes
        .iter()
        .map(|c| (c.key.market.clone(), c.from, c.to, c.by.clone()))
        .collect()
}

fn an_unset_flag_reads_none_and_a_set_one_is_read_back_and_listed(f: &mut Fixture) {
    let store = f.store();
    let fr = key("FR", Segment::Company);
    assert_eq!(store.get_flag(&fr).expect("get"), None);
    assert!(store.list_flags().expect("list").is_empty());
    assert!(store.flag_history(None, 10).expect("history").is_empty());
    assert!(store
        .flag_history(Some(&fr), 10)
        .expect("history")
        .is_empty());

    let (flag, recorded) = store
        .set_flag(&change(&fr, true, "ops@bank", Some("launch"), 1))
        .expect("set");
    let expected = Flag {
        key: fr.clone(),
        enabled: true,
        updated_at: at(1),
        updated_by: "ops@bank".into(),
        version: 1,
    };
    assert_eq!(flag, expected);
    assert_eq!(
        recorded.from, None,
        "never set before: the store's from, not ours"
    );
    assert_eq!(
        (
            recorded.to,
            recorded.by.as_str(),
            recorded.reason.as_deref(),
            recorded.at
        ),
        (true, "ops@bank", Some("launch"), at(1))
    );
    assert_eq!(store.get_flag(&fr).expect("get"), Some(expected));

    let (flag, recorded) = store
        .set_flag(&change(&fr, false, "oncall", None, 2))
        .expect("set again");
    assert_eq!(
        (flag.enabled, flag.version, flag.updated_at),
        (false, 2, at(2))
    );
    assert_eq!(
        (recorded.from, recorded.to, recorded.reason),
        (Some(true), false, None)
    );
    // Setting the value it has is still a change: recorded, version bumped.
    let (flag, recorded) = store
        .set_flag(&change(&fr, false, "oncall", None, 3))
        .expect("set same");
    assert_eq!(
        (flag.version, recorded.from, recorded.to),
        (3, Some(false), false)
    );

    // Other scopes are flags of their own.
    let fr_freelancer = key("FR", Segment::Freelancer);
    let de = key("DE", Segment::Company);
    assert_eq!(store.get_flag(&fr_freelancer).expect("get"), None);
    store
        .set_flag(&change(&fr_freelancer, true, "ops", None, 4))
        .expect("set");
    store
        .set_flag(&change(&de, true, "ops", None, 5))
        .expect("set");
    let listed: Vec<(FlagKey, bool, u64)> = store
        .list_flags()
        .expect("list")
        .into_iter()
        .map(|f| (f.key, f.enabled, f.version))
        .collect();
    assert_eq!(
        listed,
        [(de, true, 1), (fr, false, 3), (fr_freelancer, true, 1)],
        "by key"
    );
}

fn history_is_newest_first_per_flag_and_overall_within_the_limit(f: &mut Fixture) {
    let store = f.store();
    let fr = key("FR", Segment::Company);
    let de = key("DE", Segment::Company);
    // A market whose path starts with FR's: its history is not FR's.
    let odd = key("FR/company/x", Segment::Company);
    store
        .set_flag(&change(&fr, true, "a", Some("one"), 1))
        .expect("set");
    store
        .set_flag(&change(&de, true, "b", None, 2))
        .expect("set");
    store
        .set_flag(&change(&fr, false, "c", Some("three"), 3))
        .expect("set");
    store
        .set_flag(&change(&odd, true, "d", None, 4))
        .expect("set");
    store
        .set_flag(&change(&fr, true, "e", None, 5))
        .expect("set");

    let of_fr = store.flag_history(Some(&fr), 10).expect("history");
    assert_eq!(
        summary(&of_fr),
        [
            ("FR".into(), Some(false), true, "e".into()),
            ("FR".into(), Some(true), false, "c".into()),
            ("FR".into(), None, true, "a".into()),
        ]
    );
    assert_eq!(
        of_fr
            .iter()
            .map(|c| (c.at, c.reason.clone()))
            .collect::<Vec<_>>(),
        [
            (at(5), None),
            (at(3), Some("three".into())),
            (at(1), Some("one".into()))
        ]
    );
    assert_eq!(
        summary(&store.flag_history(Some(&fr), 2).expect("history")),
        summary(&of_fr[..2])
    );
    assert_eq!(
        summary(&store.flag_history(Some(&de), 10).expect("history")),
        [("DE".into(), None, true, "b".into())]
    );
    let all = store.flag_history(None, 10).expect("history");
    assert_eq!(
        all.iter().map(|c| c.by.as_str()).collect::<Vec<_>>(),
        ["e", "d", "c", "b", "a"],
        "newest first"
    );
    assert_eq!(all[1].key, odd);
    assert_eq!(
        store
            .flag_history(None, 3)
            .expect("history")
            .iter()
            .map(|c| c.by.as_str())
            .collect::<Vec<_>>(),
        ["e", "d", "c"]
    );
    assert!(store.flag_history(None, 0).expect("history").is_empty());
    assert!(store
        .flag_history(Some(&fr), 0)
        .expect("history")
        .is_empty());
}

fn flags_and_their_history_survive_reopen(f: &mut Fixture) {
    let fr = key("FR", Segment::Company);
    let (flag, _) = f
        .store()
        .set_flag(&change(&fr, true, "a", Some("launch"), 1))
        .expect("set");
    f.store()
        .set_flag(&change(
            &key("DE", Segment::Freelancer),
            false,
            "b",
            None,
            2,
        ))
        .expect("set");
    let history = f.store().flag_history(None, 10).expect("history");
    f.durable();
    f.reopen();
    let store = f.store();
    assert_eq!(store.get_flag(&fr).expect("get"), Some(flag));
    assert_eq!(store.list_flags().expect("list").len(), 2);
    assert_eq!(store.flag_history(None, 10).expect("history"), history);
    // The next set continues where the last left off, and goes on top.
    let (flag, recorded) = store
        .set_flag(&change(&fr, false, "c", None, 3))
        .expect("set");
    assert_eq!((flag.version, recorded.from), (2, Some(true)));
    let of_fr = store.flag_history(Some(&fr), 10).expect("history");
    assert_eq!(
        of_fr.iter().map(|c| c.by.as_str()).collect::<Vec<_>>(),
        ["c", "a"]
    );
    assert_eq!(store.flag_history(None, 1).expect("history")[0], recorded);
}

fn concurrent_sets_of_one_flag_all_count_and_chain(f: &mut Fixture) {
    const THREADS: usize = 8;
    const SETS: usize = 12;
    let fr = key("FR", Segment::Company);
    let writers: Vec<_> = (0..THREADS)
        .map(|thread| {
            let store = f.store().clone();
            let fr = fr.clone();
            std::thread::spawn(move || {
                for n in 0..SETS {
                    let to = (thread + n) % 2 == 0;
                    store
                        .set_flag(&change(&fr, to, &format!("writer-{thread}"), None, 1))
                        .expect("set");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer");
    }
    let calls = THREADS * SETS;
    let store = f.store();
    let flag = store.get_flag(&fr).expect("get").expect("set");
    assert_eq!(flag.version, calls as u64, "every set counted");
    let history = store.flag_history(Some(&fr), calls + 10).expect("history");
    assert_eq!(history.len(), calls, "every set recorded");
    assert_eq!(
        history[0].to, flag.enabled,
        "the newest change is the value"
    );
    // Newest first: each change started from the value the one before it set.
    for pair in history.windows(2) {
        assert_eq!(pair[0].from, Some(pair[1].to), "{pair:?}");
    }
    assert_eq!(
        history[calls - 1].from,
        None,
        "the first found it never set"
    );
    assert_eq!(
        store.flag_history(None, calls + 10).expect("history"),
        history
    );
}
