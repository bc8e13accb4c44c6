//! The GraphQL schema for notifications (async-graphql), independent of how it is served.
//!
//! Every resolver needs a [`Viewer`] that the transport puts in the request data; errors carry
//! `extensions.code`: `UNAUTHENTICATED`, `NOT_FOUND`, `RATE_LIMITED` (with `retryAfter`
//! seconds), `BAD_USER_INPUT`, `UNAVAILABLE`, and `GRAPHQL_VALIDATION_FAILED` for queries
//! refused before execution (syntax, depth, complexity). Internal details stay in the log.

use std::sync::Arc;
use std::time::Duration;

use async_graphql::connection::{Connection, Edge};
use async_graphql::{
    Context, ErrorExtensions, ID, Json, Object, Schema, SimpleObject, Subscription,
};
use futures_util::Stream;

use crate::auth::Identity;
use crate::node::Node;
use crate::notifications::{Cursor, Notification, rfc3339_millis};
use crate::protocol::unix_now_millis;
use crate::stores::RateDecision;

pub type RealtimeSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// The window GraphQL rate limits count in.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// `first` when the client gives none.
const DEFAULT_PAGE_SIZE: u32 = 20;

/// Who is asking, decided by the transport from the request's token.
#[derive(Clone)]
pub enum Viewer {
    User(Identity),
    /// No token, or a bad one: why, for the `UNAUTHENTICATED` message.
    Anonymous(String),
}

/// Builds the schema with the configured depth and complexity limits.
pub fn build_schema(node: Arc<Node>) -> RealtimeSchema {
    let limits = node.settings().graphql.clone();
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .data(node)
        .limit_depth(limits.max_depth)
        .limit_complexity(limits.max_complexity)
        .finish()
}

/// Gives every error without a code one, so clients can always branch on `extensions.code`.
pub fn ensure_error_codes(mut response: async_graphql::Response) -> async_graphql::Response {
    for error in &mut response.errors {
        let has_code = error
            .extensions
            .as_ref()
            .is_some_and(|extensions| extensions.get("code").is_some());
        if !has_code {
            error
                .extensions
                .get_or_insert_with(Default::default)
                .set("code", "GRAPHQL_VALIDATION_FAILED");
        }
    }
    response
}

fn coded(code: &'static str, message: impl Into<String>) -> async_graphql::Error {
    async_graphql::Error::new(message).extend_with(|_, extensions| extensions.set("code", code))
}

fn unavailable(failure: impl std::fmt::Display) -> async_graphql::Error {
    tracing::warn!(%failure, "graphql backend call failed");
    coded("UNAVAILABLE", "a backend is unavailable; retry shortly")
}

fn not_found() -> async_graphql::Error {
    coded("NOT_FOUND", "no such notification")
}

fn viewer<'a>(ctx: &'a Context<'_>) -> async_graphql::Result<&'a Identity> {
    match ctx.data_opt::<Viewer>() {
        Some(Viewer::User(identity)) => Ok(identity),
        Some(Viewer::Anonymous(reason)) => Err(coded("UNAUTHENTICATED", reason.clone())),
        None => Err(coded(
            "UNAUTHENTICATED",
            "send Authorization: Bearer <token>",
        )),
    }
}

fn node<'a>(ctx: &'a Context<'_>) -> &'a Arc<Node> {
    ctx.data_unchecked::<Arc<Node>>()
}

/// Counts one call of `operation` for the viewer; over the limit is `RATE_LIMITED`.
async fn within_limit(ctx: &Context<'_>, operation: &str, limit: u32) -> async_graphql::Result<()> {
    let user = viewer(ctx)?;
    let key = format!("graphql:{operation}:{}", user.user_id);
    match node(ctx)
        .rate_limiter()
        .hit(&key, limit, RATE_WINDOW)
        .await
        .map_err(unavailable)?
    {
        RateDecision::Allowed => Ok(()),
        RateDecision::Limited { retry_after } => {
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            Err(async_graphql::Error::new(format!(
                "rate limit of {limit} {operation} per minute reached"
            ))
            .extend_with(|_, extensions| {
                extensions.set("code", "RATE_LIMITED");
                extensions.set("retryAfter", seconds);
            }))
        }
    }
}

/// A notification as GraphQL shows it.
#[derive(SimpleObject, Clone)]
#[graphql(name = "Notification")]
pub struct NotificationView {
    pub id: ID,
    #[graphql(name = "type")]
    pub kind: String,
    pub content: Json<serde_json::Value>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; null while unread.
    pub read_at: Option<String>,
    pub read: bool,
}

impl From<Notification> for NotificationView {
    fn from(notification: Notification) -> Self {
        NotificationView {
            id: ID(notification.id),
            kind: notification.kind,
            content: Json(
                serde_json::from_str(&notification.content).unwrap_or(serde_json::Value::Null),
            ),
            created_at: rfc3339_millis(notification.created_at),
            read_at: notification.read_at.map(rfc3339_millis),
            read: notification.read_at.is_some(),
        }
    }
}

pub struct QueryRoot;

#[Object]
impl QueryRoot {
    /// The caller's notifications, newest first, `first` per page (default 20) after the cursor
    /// `after`; `unreadOnly` keeps unread ones.
    #[graphql(
        complexity = "first.unwrap_or(DEFAULT_PAGE_SIZE as i32).max(1) as usize * child_complexity"
    )]
    async fn notifications(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        unread_only: Option<bool>,
    ) -> async_graphql::Result<Connection<String, NotificationView>> {
        let user = viewer(ctx)?;
        let settings = &node(ctx).settings().graphql;
        within_limit(ctx, "notifications", settings.rate_limits.notifications).await?;
        let first = match first {
            None => DEFAULT_PAGE_SIZE.min(settings.max_page_size),
            Some(first) if first >= 1 && first as u32 <= settings.max_page_size => first as u32,
            Some(_) => {
                return Err(coded(
                    "BAD_USER_INPUT",
                    format!("`first` must be between 1 and {}", settings.max_page_size),
                ));
            }
        };
        let after =
            match after {
                None => None,
                Some(text) => Some(Cursor::decode(&text).ok_or_else(|| {
                    coded("BAD_USER_INPUT", "`after` is not a cursor from this API")
                })?),
            };
        let page = node(ctx)
            .notifications()
            .store()
            .list(
                &user.user_id,
                first,
                after.as_ref(),
                unread_only.unwrap_or(false),
            )
            .await
            .map_err(unavailable)?;
        let mut connection = Connection::new(after.is_some(), page.has_next_page);
        connection
            .edges
            .extend(page.items.into_iter().map(|notification| {
                Edge::new(
                    Cursor::of(&notification).encode(),
                    NotificationView::from(notification),
                )
            }));
        Ok(connection)
    }

    /// How many of the caller's notifications are unread.
    async fn unread_notification_count(&self, ctx: &Context<'_>) -> async_graphql::Result<u32> {
        let user = viewer(ctx)?;
        within_limit(
            ctx,
            "notifications",
            node(ctx).settings().graphql.rate_limits.notifications,
        )
        .await?;
        let count = node(ctx)
            .notifications()
            .store()
            .unread_count(&user.user_id)
            .await
            .map_err(unavailable)?;
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }
}

pub struct MutationRoot;

#[Object]
impl MutationRoot {
    /// Marks one of the caller's notifications read (idempotent: `readAt` is set once).
    async fn mark_notification_read(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<NotificationView> {
        let user = viewer(ctx)?;
        let limit = node(ctx)
            .settings()
            .graphql
            .rate_limits
            .mark_notification_read;
        within_limit(ctx, "markNotificationRead", limit).await?;
        let store = node(ctx).notifications().store();
        let updated = store
            .mark_read(&user.user_id, &id, unix_now_millis() as i64)
            .await
            .map_err(unavailable)?;
        updated.map(NotificationView::from).ok_or_else(not_found)
    }

    /// Deletes one of the caller's notifications.
    async fn delete_notification(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let user = viewer(ctx)?;
        let limit = node(ctx).settings().graphql.rate_limits.delete_notification;
        within_limit(ctx, "deleteNotification", limit).await?;
        let deleted = node(ctx)
            .notifications()
            .store()
            .delete(&user.user_id, &id)
            .await
            .map_err(unavailable)?;
        if deleted { Ok(true) } else { Err(not_found()) }
    }

    /// Marks every unread notification of the caller read; returns how many changed.
    async fn mark_all_notifications_read(&self, ctx: &Context<'_>) -> async_graphql::Result<u32> {
        let user = viewer(ctx)?;
        let limit = node(ctx)
            .settings()
            .graphql
            .rate_limits
            .mark_all_notifications_read;
        within_limit(ctx, "markAllNotificationsRead", limit).await?;
        let changed = node(ctx)
            .notifications()
            .store()
            .mark_all_read(&user.user_id, unix_now_millis() as i64)
            .await
            .map_err(unavailable)?;
        Ok(u32::try_from(changed).unwrap_or(u32::MAX))
    }
}

pub struct SubscriptionRoot;

#[Subscription]
impl SubscriptionRoot {
    /// The caller's new notifications as they are stored, from any node.
    async fn notification_added(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = NotificationView>> {
        let user = viewer(ctx)?;
        let watch = node(ctx)
            .watch_user(&user.user_id)
            .await
            .map_err(|error| unavailable(error.message))?;
        Ok(futures_util::stream::unfold(
            watch,
            |mut watch| async move {
                loop {
                    let frame = watch.next_frame().await?;
                    if let Some(view) = notification_from_push(frame.bytes()) {
                        return Some((view, watch));
                    }
                }
            },
        ))
    }
}

/// Reads a `notification.new` push back into a view; other pushes give `None`.
fn notification_from_push(frame: &[u8]) -> Option<NotificationView> {
    #[derive(serde::Deserialize)]
    struct Push {
        event: String,
        data: PushData,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct PushData {
        id: String,
        #[serde(rename = "type")]
        kind: String,
        content: serde_json::Value,
        created_at: String,
    }
    let push: Push = serde_json::from_slice(frame).ok()?;
    (push.event == "notification.new").then_some(NotificationView {
        id: ID(push.data.id),
        kind: push.data.kind,
        content: Json(push.data.content),
        created_at: push.data.created_at,
        read_at: None,
        read: false,
    })
}
