//! The backfill of a Stripe sync: each mirrored type listed through its list endpoint
//! in windows of `created`, each window with its own cursor, a dense window split as it
//! is listed, several windows listed at once, and each round of pages committed with
//! the progress that resumes every window (see the parent module's docs).

use super::{call, commit, fetched_at, StripeEnv, Tally, Target};
use crate::domain::stripe::{
    ObjectType, ObjectWrite, OnTie, Stamp, StripeState, TypeBackfill, Window,
};
use crate::domain::stripe_push::AuditNote;
use crate::providers::stripe::client::ListRequest;
use crate::providers::ProviderError;
use crate::sync::SyncError;

/// Windows one type's backfill keeps at most: a dense window is split only while there
/// are fewer.
const MAX_WINDOWS: usize = 16;

/// Pages' worth of seconds a window keeps when the rest of it is split off.
const SPLIT_PAGES: i64 = 8;

/// One page of a window's listing.
struct WindowPage {
    /// The page's objects.
    objects: Vec<serde_json::Value>,
    /// The second Stripe answered.
    at: i64,
    /// Whether the window is listed to its end.
    done: bool,
    /// The older part of the window, split off to be listed on its own because what is
    /// left of the window is dense (see [`list_window`]).
    split: Option<Window>,
}

/// The next page of `window`'s listing of `object_type`; `window` is moved past it.
///
/// What is left of a window after a page with more to come is the objects no newer
/// than the oldest one listed, after the last one listed. When `may_split` and that
/// rest spans more than [`SPLIT_PAGES`] times the seconds the page did (as many more
/// pages, if the objects are spread like the page's), everything older than that is
/// split off as a window of its own, listed side by side with this one. The split is
/// at a second older than the oldest listed, so no object falls in both windows.
async fn list_window(
    env: &StripeEnv<'_>,
    target: &Target<'_>,
    object_type: ObjectType,
    window: &mut Window,
    may_split: bool,
) -> Result<WindowPage, ProviderError> {
    loop {
        let request_window = window.clone();
        let listed = call(env.params, "list", || {
            env.api.list(
                target.access(),
                object_type,
                ListRequest {
                    window: request_window.clone(),
                    starting_after: request_window.after.as_deref(),
                    limit: env.params.page_size,
                },
            )
        })
        .await;
        let page = match listed {
            Ok(page) => page,
            // The object the listing continued after was deleted meanwhile: the window
            // was narrowed to its second at the last page, so list that window afresh.
            Err(error) if window.after.is_some() && is_missing(&error) => {
                window.after = None;
                continue;
            }
            Err(error) => return Err(error),
        };
        let at = fetched_at(env, &page);
        let objects = page.value.data;
        let created = objects
            .iter()
            .filter_map(|o| o.get("created").and_then(serde_json::Value::as_i64));
        let (oldest, newest) = (created.clone().min(), created.max());
        let last_id = objects
            .last()
            .and_then(|o| o.get("id"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        env.progress.page(objects.len());
        let (Some(oldest), Some(newest), Some(last_id), true) =
            (oldest, newest, last_id, page.value.has_more)
        else {
            return Ok(WindowPage {
                objects,
                at,
                done: true,
                split: None,
            });
        };
        window.lt = (oldest + 1).min(window.lt);
        window.after = Some(last_id);
        // The window keeps about SPLIT_PAGES pages' worth of seconds at this page's
        // density; anything older becomes a window of its own, split in turn when its
        // first page shows it dense. (Halving instead would spend a list call on every
        // empty half between 2011 and an account's first object.)
        let keep = SPLIT_PAGES.saturating_mul(newest - oldest + 1);
        let split = (may_split && oldest - window.gte > keep).then(|| {
            let boundary = oldest - keep;
            let older = Window::new(window.gte, boundary);
            window.gte = boundary;
            older
        });
        return Ok(WindowPage {
            objects,
            at,
            done: false,
            split,
        });
    }
}

/// The next page of a listing of `object_type` from `cursor`'s first window, one
/// window after the other (no splitting): the page's objects and the second Stripe
/// answered. `None` once every window is listed. What drift checks list with.
pub(super) async fn next_page(
    env: &StripeEnv<'_>,
    target: &Target<'_>,
    object_type: ObjectType,
    cursor: &mut TypeBackfill,
) -> Result<Option<(Vec<serde_json::Value>, i64)>, SyncError> {
    cursor.normalize();
    let Some(window) = cursor.windows.first_mut() else {
        return Ok(None);
    };
    let page = list_window(env, target, object_type, window, false).await?;
    cursor.pages += 1;
    cursor.objects += page.objects.len() as u64;
    if page.done {
        cursor.windows.remove(0);
    }
    Ok(Some((page.objects, page.at)))
}

/// Lists `object_type` until its backfill completes, in rounds: a page of each of up to
/// `backfill_parallel` windows at once, then one commit of the round's objects with the
/// progress that resumes every window. A round cut by an error still commits the pages
/// it got.
pub(super) async fn backfill_type(
    env: &StripeEnv<'_>,
    target: &Target<'_>,
    object_type: ObjectType,
    state: &mut StripeState,
    tally: &mut Tally,
) -> Result<(), SyncError> {
    loop {
        let Some(progress) = state.backfill.get_mut(&object_type) else {
            return Ok(());
        };
        if progress.done {
            return Ok(());
        }
        progress.normalize();
        if progress.windows.is_empty() {
            finish_backfill(env, target, object_type, state, Vec::new()).await?;
            return Ok(());
        }
        let width = env.params.backfill_parallel.clamp(1, MAX_WINDOWS);
        let mut round: Vec<Window> = progress
            .windows
            .drain(..width.min(progress.windows.len()))
            .collect();
        // Splitting only pays when windows are listed side by side.
        let may_split = width > 1 && progress.windows.len() + round.len() < MAX_WINDOWS;
        let pages = futures::future::join_all(
            round
                .iter_mut()
                .map(|window| list_window(env, target, object_type, window, may_split)),
        )
        .await;
        let mut writes = Vec::new();
        let mut failure = None;
        let mut still: Vec<Window> = Vec::new();
        for (window, page) in round.into_iter().zip(pages) {
            match page {
                Ok(page) => {
                    progress.pages += 1;
                    progress.objects += page.objects.len() as u64;
                    tally.pages += 1;
                    let at = page.at;
                    writes.extend(page.objects.into_iter().filter_map(|object| {
                        let id = object.get("id")?.as_str()?.to_owned();
                        Some(ObjectWrite {
                            object_type,
                            id,
                            body: Some(object),
                            stamp: Stamp { at, event_id: None },
                            on_tie: OnTie::Skip,
                            note: AuditNote::inbound("listed", "backfill"),
                        })
                    }));
                    if !page.done {
                        still.push(window);
                    }
                    still.extend(page.split);
                }
                Err(error) => {
                    still.push(window);
                    failure.get_or_insert(error);
                }
            }
        }
        // Windows in progress first, then the ones not listed yet.
        still.append(&mut progress.windows);
        progress.windows = still;
        tally.backfilled += writes.len() as u64;
        if progress.windows.is_empty() && failure.is_none() {
            finish_backfill(env, target, object_type, state, writes).await?;
            return Ok(());
        }
        commit(env, target, writes, state, Vec::new(), None).await?;
        if let Some(error) = failure {
            return Err(error.into());
        }
    }
}

pub(super) fn is_missing(error: &ProviderError) -> bool {
    crate::providers::stripe::errors::is_resource_missing(error)
        || matches!(error, ProviderError::Api { status: 400, code, .. } if code == "resource_missing")
}

/// The last page of a type's backfill: the type becomes visible in the same commit.
async fn finish_backfill(
    env: &StripeEnv<'_>,
    target: &Target<'_>,
    object_type: ObjectType,
    state: &mut StripeState,
    writes: Vec<ObjectWrite>,
) -> Result<(), SyncError> {
    if let Some(progress) = state.backfill.get_mut(&object_type) {
        progress.done = true;
        progress.windows.clear();
        progress.starting_after = None;
        progress.completed_at = Some(env.clock.now());
        tracing::info!(account_id = %target.account.id, object_type = %object_type, objects = progress.objects, pages = progress.pages, "stripe backfill completed");
    }
    state.visible.insert(object_type);
    // Once every type is visible, the drift checks begin, one interval later.
    let all_visible = target.link.types.iter().all(|t| state.is_visible(*t));
    if all_visible && state.next_drift_check.is_none() {
        state.next_drift_check = Some(env.clock.now() + env.params.drift_interval);
    }
    commit(env, target, writes, state, Vec::new(), None).await?;
    Ok(())
}
