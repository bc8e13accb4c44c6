//! Notifications: the model, the [`NotificationStore`] trait, and the service that stores them.
//! Storage only: pushing `notification.new` is the node's (`Node::create_notification`), and the
//! JetStream consumer is `crate::notification_ingest`, so this module depends on neither.
//!
//! - [`sql`]: the store on sqlx (SQLite by default, PostgreSQL when configured).

pub mod sql;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::protocol::{ErrorCode, WireError, unix_now_millis};

/// Longest accepted notification id and type, in bytes (user ids follow the token's `sub` limit).
pub const MAX_ID_BYTES: usize = 128;
/// Largest accepted `content`, in bytes of JSON.
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;

/// A stored notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub id: String,
    pub user_id: String,
    pub kind: String,
    /// JSON text, as received.
    pub content: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds; `None` while unread.
    pub read_at: Option<i64>,
}

/// RFC 3339 with milliseconds, UTC: how timestamps leave the server.
pub fn rfc3339_millis(unix_millis: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(unix_millis.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

impl Notification {
    /// The `data` of the `notification.new` push: `{"id","type","content","createdAt"}`.
    pub fn push_data(&self) -> Box<RawValue> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct PushData<'a> {
            id: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            content: &'a RawValue,
            created_at: String,
        }
        let content = RawValue::from_string(self.content.clone())
            .unwrap_or_else(|_| RawValue::from_string("null".to_owned()).expect("null is JSON"));
        let text = serde_json::to_string(&PushData {
            id: &self.id,
            kind: &self.kind,
            content: &content,
            created_at: rfc3339_millis(self.created_at),
        })
        .expect("push data serializes");
        RawValue::from_string(text).expect("serde_json output is JSON")
    }
}

/// What an internal service sends to create a notification (NATS body or HTTP body).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotificationRequest {
    pub user_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub content: Box<RawValue>,
    #[serde(default)]
    pub id: Option<String>,
}

/// A validated notification about to be stored.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub id: String,
    pub user_id: String,
    pub kind: String,
    pub content: String,
    pub created_at: i64,
}

fn check_text(field: &str, value: &str) -> Result<(), WireError> {
    check_text_within(field, value, MAX_ID_BYTES)
}

/// `check_text` with a length limit of its own.
fn check_text_within(field: &str, value: &str, max_bytes: usize) -> Result<(), WireError> {
    if value.is_empty() || value.len() > max_bytes {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!("`{field}` must be 1-{max_bytes} bytes"),
        ));
    }
    // PostgreSQL cannot store NUL in text, and no id or type needs control characters: refused
    // here, a message would be refused by the database on every redelivery.
    if value.chars().any(char::is_control) {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!("`{field}` must not contain control characters"),
        ));
    }
    Ok(())
}

impl NotificationRequest {
    /// Validates and fixes the id: the given one, else `fallback_id` (stable across
    /// redeliveries, so a retried message cannot create a second row).
    pub fn validate(
        self,
        fallback_id: impl FnOnce() -> String,
    ) -> Result<NewNotification, WireError> {
        // The token's `sub` limit: a user who can connect can get notifications.
        check_text_within("userId", &self.user_id, crate::auth::MAX_USER_ID_BYTES)?;
        check_text("type", &self.kind)?;
        let id = self.id.unwrap_or_else(fallback_id);
        check_text("id", &id)?;
        let content = self.content.get();
        if content.len() > MAX_CONTENT_BYTES {
            return Err(WireError::new(
                ErrorCode::PayloadTooLarge,
                format!("`content` exceeds {MAX_CONTENT_BYTES} bytes"),
            ));
        }
        Ok(NewNotification {
            id,
            user_id: self.user_id,
            kind: self.kind,
            content: content.to_owned(),
            created_at: unix_now_millis() as i64,
        })
    }
}

/// A position in a user's newest-first listing: `(created_at, id)` of the last item seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: i64,
    pub id: String,
}

impl Cursor {
    pub fn of(notification: &Notification) -> Cursor {
        Cursor {
            created_at: notification.created_at,
            id: notification.id.clone(),
        }
    }

    /// Opaque to clients: base64url of `<created_at>:<id>`.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.created_at, self.id))
    }

    pub fn decode(text: &str) -> Option<Cursor> {
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (created_at, id) = text.split_once(':')?;
        Some(Cursor {
            created_at: created_at.parse().ok()?,
            id: id.to_owned(),
        })
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<Notification>,
    pub has_next_page: bool,
}

/// A storage failure. Details go to the log; clients see `unavailable` (retry), or
/// `invalid_request` when the database refused the data itself, which no retry can change.
#[derive(Debug, thiserror::Error)]
#[error("notification store: {message}")]
pub struct StoreFailure {
    pub message: String,
    /// The database answered and refused this data (a data exception or constraint violation),
    /// as opposed to being unreachable, slow or out of connections.
    pub refused_the_data: bool,
}

/// Where notifications live. Guarantees (checked by `conformance::notifications`):
/// - `insert` is idempotent on `(user_id, id)`: a second insert with the same pair changes
///   nothing and returns the stored row with `created = false`. Ids are scoped to their user.
/// - Every read and change is scoped to `user_id`: another user's id behaves like an unknown id.
/// - `list` is newest first (`created_at`, then `id`, descending), continues strictly after
///   `after`, and reports whether more rows follow.
/// - `mark_read` sets `read_at` once; later calls return the row unchanged.
#[async_trait]
pub trait NotificationStore: Send + Sync + 'static {
    /// Answers when the database does (a trivial query); for readiness probes.
    async fn ping(&self) -> Result<(), StoreFailure>;
    async fn insert(
        &self,
        notification: &NewNotification,
    ) -> Result<(Notification, bool), StoreFailure>;
    async fn list(
        &self,
        user_id: &str,
        first: u32,
        after: Option<&Cursor>,
        unread_only: bool,
    ) -> Result<Page, StoreFailure>;
    async fn unread_count(&self, user_id: &str) -> Result<u64, StoreFailure>;
    async fn mark_read(
        &self,
        user_id: &str,
        id: &str,
        at: i64,
    ) -> Result<Option<Notification>, StoreFailure>;
    async fn mark_all_read(&self, user_id: &str, at: i64) -> Result<u64, StoreFailure>;
    async fn delete(&self, user_id: &str, id: &str) -> Result<bool, StoreFailure>;
}

fn store_unavailable(failure: StoreFailure) -> WireError {
    if failure.refused_the_data {
        tracing::warn!(%failure, "the database refused a notification");
        return WireError::new(
            ErrorCode::InvalidRequest,
            "the database refused this notification; a retry cannot succeed",
        );
    }
    tracing::warn!(%failure, "notification store failed");
    WireError::new(
        ErrorCode::Unavailable,
        "notification storage is unavailable; retry shortly",
    )
}

/// Creates notifications: commit first, then push to the user's sockets on every node.
pub struct NotificationService {
    store: Arc<dyn NotificationStore>,
}

impl NotificationService {
    pub fn new(store: Arc<dyn NotificationStore>) -> NotificationService {
        NotificationService { store }
    }

    pub fn store(&self) -> &Arc<dyn NotificationStore> {
        &self.store
    }

    /// Stores the notification (idempotent on user and id) and, if it is new, pushes `notification.new`.
    /// Returns the stored row and whether this call created it.
    /// Stores the notification (idempotent on user and id); `true` when this call created it.
    /// Pushing `notification.new` is the node's part (`Node::create_notification`): this
    /// service knows storage only, so `node` and `notifications` do not depend on each other.
    pub async fn insert(&self, new: &NewNotification) -> Result<(Notification, bool), WireError> {
        let started = std::time::Instant::now();
        let inserted = self.store.insert(new).await;
        // A refusal of the data is the caller's error, not the database's.
        let failed = inserted
            .as_ref()
            .is_err_and(|failure| !failure.refused_the_data);
        crate::metrics::record_backend_call("database", started, failed);
        let (stored, created) = inserted.map_err(store_unavailable)?;
        if created {
            metrics::counter!(crate::metrics::NOTIFICATIONS_CREATED).increment(1);
        }
        Ok((stored, created))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(user_id: &str, kind: &str) -> NotificationRequest {
        let body = serde_json::json!({"userId": user_id, "type": kind, "content": {}});
        serde_json::from_str(&body.to_string()).unwrap()
    }

    #[test]
    fn every_user_who_can_connect_can_get_notifications() {
        let longest_sub = "u".repeat(crate::auth::MAX_USER_ID_BYTES);
        assert!(request(&longest_sub, "t").validate(|| "id".into()).is_ok());
        let too_long = "u".repeat(crate::auth::MAX_USER_ID_BYTES + 1);
        assert!(request(&too_long, "t").validate(|| "id".into()).is_err());
    }

    #[test]
    fn control_characters_are_refused_in_ids_and_types() {
        for (user, kind) in [("a\u{0}b", "t"), ("a", "t\n"), ("a\u{7f}", "t")] {
            let error = request(user, kind).validate(|| "id".into()).unwrap_err();
            assert_eq!(error.code, ErrorCode::InvalidRequest);
            assert!(
                error.message.contains("control characters"),
                "{}",
                error.message
            );
        }
        let error = request("a", "t").validate(|| "id\u{0}".into()).unwrap_err();
        assert!(error.message.contains("`id`"));
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = Cursor {
            created_at: 1_795_643_627_123,
            id: "a:b".into(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(Cursor::decode("!!!"), None);
        assert_eq!(Cursor::decode(&URL_SAFE_NO_PAD.encode("no-colon")), None);
    }

    #[test]
    fn requests_are_validated_and_get_a_stable_id() {
        let request: NotificationRequest =
            serde_json::from_str(r#"{"userId":"u","type":"lesson.done","content":{"a":1}}"#)
                .unwrap();
        let new = request.validate(|| "js-7".into()).unwrap();
        assert_eq!(new.id, "js-7");
        assert_eq!(new.content, r#"{"a":1}"#);
        let empty: NotificationRequest =
            serde_json::from_str(r#"{"userId":"","type":"t","content":1}"#).unwrap();
        assert_eq!(
            empty.validate(|| "x".into()).unwrap_err().code,
            ErrorCode::InvalidRequest
        );
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
    }
}
