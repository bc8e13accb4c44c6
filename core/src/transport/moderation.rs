//! The moderation API over HTTP (`X-API-Key`, like `/api/publish`); the requests themselves are
//! `crate::moderation`'s, shared with NATS.
//!
//! - `POST /api/users/disconnect` `{"user", "reconnect"?: true}`
//! - `POST /api/rooms/remove` `{"room", "user", "block_secs"?: 0}`
//! - `GET /api/rooms/info?room=..`: members, their sockets, nodes and `last_seen`
//! - `GET /api/users/info?user=..`: the user's sockets and nodes
//! - `GET /api/cluster/info`: the nodes, their connections and versions

use std::marker::PhantomData;
use std::sync::Arc;

use salvo::prelude::*;

use super::http::{authorized_json_body, check_api_key};
use super::render_error;
use crate::moderation::ModerationRequest;
use crate::node::Node;

/// `POST /api/users/disconnect` (`DisconnectRequest`) and `POST /api/rooms/remove`
/// (`RemoveRequest`): the key, the body, then the request's own `apply`.
pub struct ModerationEndpoint<R> {
    node: Arc<Node>,
    request: PhantomData<fn() -> R>,
}

impl<R> ModerationEndpoint<R> {
    pub fn new(node: Arc<Node>) -> Self {
        ModerationEndpoint {
            node,
            request: PhantomData,
        }
    }
}

#[async_trait]
impl<R: ModerationRequest + 'static> Handler for ModerationEndpoint<R> {
    async fn handle(
        &self,
        req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        let answer = match authorized_json_body::<R>(&self.node, req).await {
            Ok(request) => request.apply(&self.node).await,
            Err(error) => Err(error),
        };
        match answer {
            Ok(body) => res.render(Json(body)),
            Err(error) => render_error(res, &error),
        }
    }
}

/// `GET /api/rooms/info?room=..` and `GET /api/users/info?user=..`.
pub struct InfoEndpoint {
    node: Arc<Node>,
    about: InfoAbout,
}

/// What an [`InfoEndpoint`] answers about.
#[derive(Clone, Copy)]
pub enum InfoAbout {
    Room,
    User,
    Cluster,
}

impl InfoEndpoint {
    pub fn new(node: Arc<Node>, about: InfoAbout) -> Self {
        InfoEndpoint { node, about }
    }

    async fn answer(&self, req: &Request) -> Result<serde_json::Value, crate::protocol::WireError> {
        check_api_key(&self.node, req)?;
        let parameter = match self.about {
            InfoAbout::Room => "room",
            InfoAbout::User => "user",
            InfoAbout::Cluster => return self.node.cluster_info().await,
        };
        let value = req.query::<String>(parameter).ok_or_else(|| {
            crate::protocol::WireError::new(
                crate::protocol::ErrorCode::InvalidRequest,
                format!("missing query parameter `{parameter}`"),
            )
        })?;
        match self.about {
            InfoAbout::Room => self.node.room_info(&value).await,
            InfoAbout::User => self.node.user_info(&value).await,
            InfoAbout::Cluster => self.node.cluster_info().await,
        }
    }
}

#[async_trait]
impl Handler for InfoEndpoint {
    async fn handle(
        &self,
        req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        match self.answer(req).await {
            Ok(body) => res.render(Json(body)),
            Err(error) => render_error(res, &error),
        }
    }
}
