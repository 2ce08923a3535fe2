//! One ordered collection of rendered JSON documents (an account's objects of one type,
//! or its events), in Stripe's list order: newest `created` first, then id descending.
//! Ids grow with creation (see `objects::new_id`), so within one second the later
//! object comes first, as at Stripe.
//!
//! The order is a `BTreeMap` keyed by `(Reverse(created), Reverse(id))` and an id index
//! gives each id's `created`, so a page is `O(log n + page)` whatever the collection's
//! size: the cursor's key is found through the index and the scan starts right after
//! it. Documents are kept as their JSON text: a page is written by concatenation, and
//! generating 100,000 objects never builds a `serde_json::Value`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use rand::Rng;

/// The order of a collection: newest first, then id descending.
type Key = (Reverse<i64>, Reverse<String>);

/// A `created` range, both ends inclusive (`gt`/`lt` are normalised to these).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct CreatedRange {
    /// Oldest `created` listed.
    pub gte: Option<i64>,
    /// Newest `created` listed.
    pub lte: Option<i64>,
}

impl CreatedRange {
    /// Narrows the range to also satisfy `gte` (`None`: no change).
    pub fn at_least(mut self, gte: Option<i64>) -> CreatedRange {
        if let Some(gte) = gte {
            self.gte = Some(self.gte.map_or(gte, |old| old.max(gte)));
        }
        self
    }

    /// Narrows the range to also satisfy `lte` (`None`: no change).
    pub fn at_most(mut self, lte: Option<i64>) -> CreatedRange {
        if let Some(lte) = lte {
            self.lte = Some(self.lte.map_or(lte, |old| old.min(lte)));
        }
        self
    }
}

/// Where a page starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cursor<'a> {
    /// At the newest match.
    Start,
    /// Right after this id (Stripe's `starting_after`).
    After(&'a str),
    /// The matches right before this id (Stripe's `ending_before`).
    Before(&'a str),
}

/// A page: the documents in list order, and whether more match beyond them (past the
/// end for a forward page, before the start for an `ending_before` page).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Page<'a> {
    pub data: Vec<&'a str>,
    pub has_more: bool,
}

/// The cursor names an id the collection does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct UnknownCursor;

/// An ordered collection of JSON documents by id.
#[derive(Debug, Default)]
pub(super) struct Collection {
    ordered: BTreeMap<Key, String>,
    created_of: HashMap<String, i64>,
}

/// The first key after every key with `created` above `newest`.
fn start_at_or_below(newest: i64) -> Bound<Key> {
    match newest.checked_add(1) {
        // `Reverse("")` sorts after every other id of that second: excluding it starts
        // at the newest document of `newest` or older.
        Some(above) => Bound::Excluded((Reverse(above), Reverse(String::new()))),
        None => Bound::Unbounded,
    }
}

fn later(a: Bound<Key>, b: Bound<Key>) -> Bound<Key> {
    match (&a, &b) {
        (Bound::Unbounded, _) => b,
        (_, Bound::Unbounded) => a,
        (Bound::Excluded(ka) | Bound::Included(ka), Bound::Excluded(kb) | Bound::Included(kb)) => {
            if ka >= kb {
                a
            } else {
                b
            }
        }
    }
}

impl Collection {
    /// How many documents it holds.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.created_of.len()
    }

    /// Inserts or replaces the document of `id`.
    pub fn put(&mut self, id: String, created: i64, json: String) {
        if let Some(old) = self.created_of.insert(id.clone(), created) {
            if old != created {
                self.ordered.remove(&(Reverse(old), Reverse(id.clone())));
            }
        }
        self.ordered.insert((Reverse(created), Reverse(id)), json);
    }

    /// The document of `id`.
    pub fn get(&self, id: &str) -> Option<&str> {
        let created = *self.created_of.get(id)?;
        self.ordered
            .get(&(Reverse(created), Reverse(id.to_owned())))
            .map(String::as_str)
    }

    /// Whether it holds `id`.
    pub fn contains(&self, id: &str) -> bool {
        self.created_of.contains_key(id)
    }

    /// Removes the document of `id`, returning it.
    pub fn remove(&mut self, id: &str) -> Option<String> {
        let created = self.created_of.remove(id)?;
        self.ordered
            .remove(&(Reverse(created), Reverse(id.to_owned())))
    }

    /// Every document, in list order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.ordered.values().map(String::as_str)
    }

    /// Removes the documents created before `oldest_kept`; how many.
    pub fn prune_before(&mut self, oldest_kept: i64) -> usize {
        let mut pruned = 0;
        while let Some(entry) = self.ordered.last_entry() {
            if entry.key().0 .0 >= oldest_kept {
                break;
            }
            let ((_, Reverse(id)), _) = entry.remove_entry();
            self.created_of.remove(&id);
            pruned += 1;
        }
        pruned
    }

    /// A document picked at random (roughly uniformly over `created`), without scanning.
    pub fn random_id(&self, rng: &mut impl Rng) -> Option<&str> {
        let (Reverse(newest), _) = self.ordered.first_key_value()?.0;
        let (Reverse(oldest), _) = self.ordered.last_key_value()?.0;
        let at = rng.gen_range(*oldest..=*newest);
        self.ordered
            .range((start_at_or_below(at), Bound::Unbounded))
            .next()
            .map(|((_, Reverse(id)), _)| id.as_str())
    }

    /// One page of the documents within `created` that `keep` accepts, from `cursor`,
    /// at most `limit` of them. `keep` is asked only about documents scanned, so a page
    /// costs the scan up to its last match (plus one, for `has_more`).
    pub fn page<'a>(
        &'a self,
        cursor: Cursor<'_>,
        created: CreatedRange,
        limit: usize,
        mut keep: impl FnMut(&str) -> bool,
    ) -> Result<Page<'a>, UnknownCursor> {
        let key_of = |id: &str| -> Result<Key, UnknownCursor> {
            let at = self.created_of.get(id).ok_or(UnknownCursor)?;
            Ok((Reverse(*at), Reverse(id.to_owned())))
        };
        let mut data = Vec::with_capacity(limit.min(128));
        let mut has_more = false;
        match cursor {
            Cursor::Start | Cursor::After(_) => {
                let mut start = created.lte.map_or(Bound::Unbounded, start_at_or_below);
                if let Cursor::After(id) = cursor {
                    start = later(start, Bound::Excluded(key_of(id)?));
                }
                let scan = self
                    .ordered
                    .range((start, Bound::Unbounded))
                    .take_while(|((Reverse(at), _), _)| created.gte.is_none_or(|gte| *at >= gte))
                    .filter(|(_, json)| keep(json));
                for (_, json) in scan {
                    if data.len() == limit {
                        has_more = true;
                        break;
                    }
                    data.push(json.as_str());
                }
            }
            Cursor::Before(id) => {
                // Walk towards the newer documents from the cursor, then turn the page
                // around so that it reads newest first like every other.
                let scan = self
                    .ordered
                    .range((Bound::Unbounded, Bound::Excluded(key_of(id)?)))
                    .rev()
                    .skip_while(|((Reverse(at), _), _)| created.gte.is_some_and(|gte| *at < gte))
                    .take_while(|((Reverse(at), _), _)| created.lte.is_none_or(|lte| *at <= lte))
                    .filter(|(_, json)| keep(json));
                for (_, json) in scan {
                    if data.len() == limit {
                        has_more = true;
                        break;
                    }
                    data.push(json.as_str());
                }
                data.reverse();
            }
        }
        Ok(Page { data, has_more })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Ten documents: `d0`…`d9` with `created` 100, 100, 101, 101, … (two per second);
    /// the document is its id.
    fn ten() -> Collection {
        let mut c = Collection::default();
        for i in 0..10 {
            c.put(format!("d{i}"), 100 + i / 2, format!("d{i}"));
        }
        c
    }

    fn ids(page: &Page<'_>) -> Vec<String> {
        page.data.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pages_run_newest_first_and_resume_after_the_cursor() {
        let c = ten();
        let first = c
            .page(Cursor::Start, CreatedRange::default(), 4, |_| true)
            .unwrap();
        assert_eq!(ids(&first), ["d9", "d8", "d7", "d6"]);
        assert!(first.has_more);
        let second = c
            .page(Cursor::After("d6"), CreatedRange::default(), 6, |_| true)
            .unwrap();
        assert_eq!(ids(&second), ["d5", "d4", "d3", "d2", "d1", "d0"]);
        assert!(!second.has_more);
        let before = c
            .page(Cursor::Before("d4"), CreatedRange::default(), 3, |_| true)
            .unwrap();
        assert_eq!(ids(&before), ["d7", "d6", "d5"]);
        assert!(before.has_more);
        assert_eq!(
            c.page(Cursor::After("nope"), CreatedRange::default(), 3, |_| true),
            Err(UnknownCursor)
        );
    }

    #[test]
    fn created_bounds_and_filters_narrow_the_scan() {
        let c = ten();
        let range = CreatedRange {
            gte: Some(101),
            lte: Some(103),
        };
        let all = c.page(Cursor::Start, range, 100, |_| true).unwrap();
        assert_eq!(ids(&all), ["d7", "d6", "d5", "d4", "d3", "d2"]);
        let odd = c
            .page(Cursor::After("d7"), range, 100, |d| {
                d.ends_with(['1', '3', '5'])
            })
            .unwrap();
        assert_eq!(ids(&odd), ["d5", "d3"]);
        let before = c.page(Cursor::Before("d1"), range, 100, |_| true).unwrap();
        assert_eq!(ids(&before), ["d7", "d6", "d5", "d4", "d3", "d2"]);
        assert!(!before.has_more);
    }

    #[test]
    fn replacing_moves_a_document_and_pruning_drops_the_oldest() {
        let mut c = ten();
        c.put("d0".into(), 200, "d0 again".into());
        assert_eq!(c.iter().next(), Some("d0 again"));
        assert_eq!(c.len(), 10);
        assert_eq!(c.prune_before(102), 3);
        assert!(!c.contains("d1") && c.contains("d4") && c.get("d0") == Some("d0 again"));
        assert_eq!(c.remove("d4"), Some("d4".into()));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for _ in 0..20 {
            assert!(c.contains(c.random_id(&mut rng).unwrap()));
        }
    }
}
