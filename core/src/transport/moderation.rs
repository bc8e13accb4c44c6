//! The moderation API (`X-API-Key`, like `/api/publish`): act on a user across the cluster.
//!
//! - `POST /api/users/disconnect` `{"user", "reconnect"?: true}`: every socket of the user, on
//!   every node, is closed with 4008 `disconnected_by_server` (reconnect allowed) or, with
//!   `"reconnect": false`, 4503 `access_revoked` (clients stop).
//! - `POST /api/rooms/remove` `{"room", "user", "block_secs"?: 0}`: every socket of the user
//!   leaves the room (members see `room.user_left`, the user's sockets get `room.removed`);
//!   with `block_secs`, joins by the user are refused with `room_forbidden` for that long.
//!
//! Both answer `{"ok":true}` once every node has been told (the broker accepted the command);
//! sockets close or leave within moments after.

use std::sync::Arc;
use std::time::Duration;

use salvo::prelude::*;
use serde::Deserialize;

use super::http::authorized_json_body;
use super::render_error;
use crate::node::Node;
use crate::protocol::{ErrorCode, WireError};

/// Longest block a removal may set: 30 days.
const MAX_BLOCK_SECS: u64 = 30 * 24 * 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    user: String,
    #[serde(default = "reconnect_by_default")]
    reconnect: bool,
}

fn reconnect_by_default() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveBody {
    room: String,
    user: String,
    #[serde(default)]
    block_secs: u64,
}

/// `POST /api/users/disconnect`.
pub struct DisconnectUserEndpoint {
    node: Arc<Node>,
}

impl DisconnectUserEndpoint {
    pub fn new(node: Arc<Node>) -> Self {
        DisconnectUserEndpoint { node }
    }

    async fn disconnect(&self, req: &mut Request) -> Result<serde_json::Value, WireError> {
        let body: DisconnectBody = authorized_json_body(&self.node, req).await?;
        self.node
            .disconnect_user(&body.user, body.reconnect)
            .await?;
        Ok(serde_json::json!({ "ok": true }))
    }
}

#[async_trait]
impl Handler for DisconnectUserEndpoint {
    async fn handle(
        &self,
        req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        match self.disconnect(req).await {
            Ok(body) => res.render(Json(body)),
            Err(error) => render_error(res, &error),
        }
    }
}

/// `POST /api/rooms/remove`.
pub struct RemoveFromRoomEndpoint {
    node: Arc<Node>,
}

impl RemoveFromRoomEndpoint {
    pub fn new(node: Arc<Node>) -> Self {
        RemoveFromRoomEndpoint { node }
    }

    async fn remove(&self, req: &mut Request) -> Result<serde_json::Value, WireError> {
        let body: RemoveBody = authorized_json_body(&self.node, req).await?;
        if body.block_secs > MAX_BLOCK_SECS {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                format!("`block_secs` is at most {MAX_BLOCK_SECS} (30 days)"),
            ));
        }
        let block = Duration::from_secs(body.block_secs);
        let room = self
            .node
            .remove_from_room(&body.user, &body.room, Some(block))
            .await?;
        Ok(serde_json::json!({ "ok": true, "room": room.as_str() }))
    }
}

#[async_trait]
impl Handler for RemoveFromRoomEndpoint {
    async fn handle(
        &self,
        req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        match self.remove(req).await {
            Ok(body) => res.render(Json(body)),
            Err(error) => render_error(res, &error),
        }
    }
}
