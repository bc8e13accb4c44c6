//! The `NotificationStore` guarantees (see `notifications`), one function per guarantee, so that
//! a failure names the guarantee it broke. Each takes a factory giving a store (callers may
//! build a fresh one per call or hand out a shared one); each test uses users of its own.

use std::future::Future;
use std::sync::Arc;

use super::unique;
use crate::notifications::{Cursor, NewNotification, NotificationStore};

fn new_notification(id: &str, user_id: &str, created_at: i64) -> NewNotification {
    NewNotification {
        id: id.to_owned(),
        user_id: user_id.to_owned(),
        kind: "lesson.completed".to_owned(),
        content: format!("{{\"lesson\":\"{id}\"}}"),
        created_at,
    }
}

/// The id of `owner`'s `n`th notification.
fn id_of(owner: &str, n: u32) -> String {
    format!("{owner}-n{n}")
}

/// Inserts `owner`'s n1..n5 at increasing times, and n6 at n5's time (the id breaks the tie);
/// each is created, unread.
async fn insert_six(store: &dyn NotificationStore, owner: &str) {
    for n in 1..=5 {
        let id = id_of(owner, n);
        let (stored, created) = store
            .insert(&new_notification(&id, owner, 1_000 + i64::from(n)))
            .await
            .unwrap();
        assert!(created, "a new id is created");
        assert_eq!(stored.read_at, None);
    }
    store
        .insert(&new_notification(&id_of(owner, 6), owner, 1_005))
        .await
        .unwrap();
}

/// `insert` is idempotent on `(user_id, id)`: a second insert changes nothing and returns the
/// first row with `created = false`; the same id for another user is another notification.
pub async fn insert_is_idempotent_per_user_and_id<F, Fut>(make_store: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn NotificationStore>>,
{
    let store = make_store().await;
    let owner = unique("owner-");
    let stranger = unique("stranger-");
    let id = |n: u32| id_of(&owner, n);
    insert_six(store.as_ref(), &owner).await;
    let mut duplicate = new_notification(&id(1), &owner, 9_999);
    duplicate.content = "\"changed\"".to_owned();
    let (stored, created) = store.insert(&duplicate).await.unwrap();
    assert!(!created, "insert is idempotent on id");
    assert_eq!(
        (stored.created_at, stored.content.as_str()),
        (1_001, format!("{{\"lesson\":\"{}\"}}", id(1)).as_str()),
        "the first row stays"
    );
    let (theirs, created) = store
        .insert(&new_notification(&id(1), &stranger, 7))
        .await
        .unwrap();
    assert!(
        created,
        "the same id for another user is another notification"
    );
    assert_eq!(
        (theirs.user_id.as_str(), theirs.created_at),
        (stranger.as_str(), 7)
    );
    assert!(store.delete(&stranger, &id(1)).await.unwrap());
}

/// Every read and change is scoped to its user: another user's id behaves like an unknown id
/// (not marked read, not deleted, not listed, not counted).
pub async fn another_users_ids_behave_as_unknown<F, Fut>(make_store: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn NotificationStore>>,
{
    let store = make_store().await;
    let owner = unique("owner-");
    let stranger = unique("stranger-");
    let id = |n: u32| id_of(&owner, n);
    insert_six(store.as_ref(), &owner).await;
    assert_eq!(
        store.mark_read(&stranger, &id(5), 2_000).await.unwrap(),
        None,
        "another user's id is unknown"
    );
    assert!(
        !store.delete(&stranger, &id(5)).await.unwrap(),
        "another user cannot delete"
    );
    assert!(
        store
            .list(&stranger, 10, None, false)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(store.unread_count(&stranger).await.unwrap(), 0);
    assert_eq!(
        store.mark_read(&owner, "no-such-id", 2_000).await.unwrap(),
        None
    );
    assert_eq!(
        store.unread_count(&owner).await.unwrap(),
        6,
        "the owner's notifications are untouched"
    );
}

/// `list` is newest first (`created_at`, then `id`, descending), continues strictly after the
/// cursor, and reports whether more rows follow.
pub async fn list_is_newest_first_and_continues_after_the_cursor<F, Fut>(make_store: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn NotificationStore>>,
{
    let store = make_store().await;
    let owner = unique("owner-");
    let id = |n: u32| id_of(&owner, n);
    insert_six(store.as_ref(), &owner).await;
    let first_page = store.list(&owner, 2, None, false).await.unwrap();
    let ids: Vec<&str> = first_page
        .items
        .iter()
        .map(|item| item.id.as_str())
        .collect();
    assert_eq!(
        ids,
        vec![id(6).as_str(), id(5).as_str()],
        "newest first, id breaks ties"
    );
    assert!(first_page.has_next_page);
    let cursor = Cursor::of(first_page.items.last().unwrap());
    let second_page = store.list(&owner, 10, Some(&cursor), false).await.unwrap();
    let ids: Vec<String> = second_page
        .items
        .iter()
        .map(|item| item.id.clone())
        .collect();
    assert_eq!(
        ids,
        vec![id(4), id(3), id(2), id(1)],
        "continues strictly after the cursor"
    );
    assert!(!second_page.has_next_page);
}

/// `mark_read` sets `read_at` once (later calls return the row unchanged); the unread count and
/// the unread-only listing follow it.
pub async fn mark_read_sets_read_at_once<F, Fut>(make_store: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn NotificationStore>>,
{
    let store = make_store().await;
    let owner = unique("owner-");
    let id = |n: u32| id_of(&owner, n);
    insert_six(store.as_ref(), &owner).await;
    assert_eq!(store.unread_count(&owner).await.unwrap(), 6);
    let read = store
        .mark_read(&owner, &id(6), 2_000)
        .await
        .unwrap()
        .expect("own notification");
    assert_eq!(read.read_at, Some(2_000));
    let again = store
        .mark_read(&owner, &id(6), 3_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.read_at, Some(2_000), "read_at is set once");
    assert_eq!(store.unread_count(&owner).await.unwrap(), 5);
    let unread = store.list(&owner, 10, None, true).await.unwrap();
    assert!(
        unread.items.iter().all(|item| item.read_at.is_none()) && unread.items.len() == 5,
        "unread filter"
    );
}

/// `delete` removes a notification once (deleting twice finds nothing), and `mark_all_read`
/// marks exactly the remaining unread ones.
pub async fn delete_finds_once_and_mark_all_read_marks_the_rest<F, Fut>(make_store: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn NotificationStore>>,
{
    let store = make_store().await;
    let owner = unique("owner-");
    let id = |n: u32| id_of(&owner, n);
    insert_six(store.as_ref(), &owner).await;
    store
        .mark_read(&owner, &id(6), 2_000)
        .await
        .unwrap()
        .expect("own notification");
    assert!(store.delete(&owner, &id(5)).await.unwrap());
    assert!(
        !store.delete(&owner, &id(5)).await.unwrap(),
        "deleting twice finds nothing"
    );
    assert_eq!(
        store.mark_all_read(&owner, 4_000).await.unwrap(),
        4,
        "marks the remaining unread"
    );
    assert_eq!(store.unread_count(&owner).await.unwrap(), 0);
}

/// Declares module `$module` with one `#[tokio::test]` per notification store guarantee, each
/// named after it. `$factory` is an expression giving a store factory (`Fn() -> impl
/// Future<Output = Arc<dyn NotificationStore>>`); it is evaluated once per test.
#[macro_export]
macro_rules! notification_conformance_tests {
    ($module:ident, $factory:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            use $crate::conformance::notifications as guarantees;

            #[tokio::test]
            async fn insert_is_idempotent_per_user_and_id() {
                guarantees::insert_is_idempotent_per_user_and_id($factory).await;
            }

            #[tokio::test]
            async fn another_users_ids_behave_as_unknown() {
                guarantees::another_users_ids_behave_as_unknown($factory).await;
            }

            #[tokio::test]
            async fn list_is_newest_first_and_continues_after_the_cursor() {
                guarantees::list_is_newest_first_and_continues_after_the_cursor($factory).await;
            }

            #[tokio::test]
            async fn mark_read_sets_read_at_once() {
                guarantees::mark_read_sets_read_at_once($factory).await;
            }

            #[tokio::test]
            async fn delete_finds_once_and_mark_all_read_marks_the_rest() {
                guarantees::delete_finds_once_and_mark_all_read_marks_the_rest($factory).await;
            }
        }
    };
}
