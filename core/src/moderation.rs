//! The moderation requests services send, over HTTP (`POST /api/users/disconnect`,
//! `POST /api/rooms/remove`) or NATS (`<prefix>.api.users.disconnect`,
//! `<prefix>.api.rooms.remove`): one definition and one validation for both doors.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::node::Node;
use crate::protocol::{ErrorCode, WireError};

/// Longest block a removal may set: 30 days.
pub const MAX_BLOCK_SECS: u64 = 30 * 24 * 3600;

/// Close every socket of `user`, on every node.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectRequest {
    pub user: String,
    /// True: close 4008 `disconnected_by_server` (clients reconnect); false: 4503
    /// `access_revoked` (clients stop). Default true.
    #[serde(default = "reconnect_by_default")]
    pub reconnect: bool,
}

fn reconnect_by_default() -> bool {
    true
}

/// Remove `user` from `room` on every node, and refuse their joins for `block_secs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveRequest {
    pub room: String,
    pub user: String,
    #[serde(default)]
    pub block_secs: u64,
}

/// A moderation request: parsed from a body, then applied through the node. HTTP and NATS
/// serve every request type through this one trait.
#[async_trait::async_trait]
pub trait ModerationRequest: serde::de::DeserializeOwned + Send {
    /// Applies the request; `Ok` is the answer body.
    async fn apply(self, node: &Node) -> Result<Value, WireError>;
}

/// Parses `body` as `R` and applies it: what both doors do with a request.
pub async fn parse_and_apply<R: ModerationRequest>(
    node: &Node,
    body: &[u8],
) -> Result<Value, WireError> {
    parse::<R>(body)?.apply(node).await
}

#[async_trait::async_trait]
impl ModerationRequest for DisconnectRequest {
    /// Tells every node; the answer body is `{"ok":true}`.
    async fn apply(self, node: &Node) -> Result<Value, WireError> {
        node.disconnect_user(&self.user, self.reconnect).await?;
        Ok(json!({ "ok": true }))
    }
}

#[async_trait::async_trait]
impl ModerationRequest for RemoveRequest {
    /// Sets the block, tells every node; the answer body is `{"ok":true,"room":..}`.
    async fn apply(self, node: &Node) -> Result<Value, WireError> {
        if self.block_secs > MAX_BLOCK_SECS {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                format!("`block_secs` is at most {MAX_BLOCK_SECS} (30 days)"),
            ));
        }
        let block = Duration::from_secs(self.block_secs);
        let room = node
            .remove_from_room(&self.user, &self.room, Some(block))
            .await?;
        Ok(json!({ "ok": true, "room": room.as_str() }))
    }
}

/// Parses a request body, naming what is wrong.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    serde_json::from_slice(body).map_err(|error| {
        WireError::new(ErrorCode::InvalidRequest, format!("invalid body: {error}"))
    })
}
