//! The moderation API over HTTP (`X-API-Key`, like `/api/publish`); the requests themselves are
//! `crate::moderation`'s, shared with NATS.
//!
//! - `POST /api/users/disconnect` `{"user", "reconnect"?: true}`
//! - `POST /api/rooms/remove` `{"room", "user", "block_secs"?: 0}`

use std::sync::Arc;

use salvo::prelude::*;

use super::http::authorized_json_body;
use super::render_error;
use crate::moderation::{DisconnectRequest, RemoveRequest};
use crate::node::Node;

/// `POST /api/users/disconnect`.
pub struct DisconnectUserEndpoint {
    node: Arc<Node>,
}

impl DisconnectUserEndpoint {
    pub fn new(node: Arc<Node>) -> Self {
        DisconnectUserEndpoint { node }
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
        let answer = match authorized_json_body::<DisconnectRequest>(&self.node, req).await {
            Ok(request) => request.apply(&self.node).await,
            Err(error) => Err(error),
        };
        match answer {
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
        let answer = match authorized_json_body::<RemoveRequest>(&self.node, req).await {
            Ok(request) => request.apply(&self.node).await,
            Err(error) => Err(error),
        };
        match answer {
            Ok(body) => res.render(Json(body)),
            Err(error) => render_error(res, &error),
        }
    }
}
