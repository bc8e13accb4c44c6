//! `GET /ws`: token check and admission before the upgrade, then the session loop.

use std::sync::Arc;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt, future};
use salvo::prelude::*;
use salvo::websocket::{Message, WebSocketUpgrade};
use tokio_tungstenite::tungstenite::Error as TungsteniteError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::Utf8Bytes;

use super::{bearer_token, render_error};
use crate::metrics as names;
use crate::node::Node;
use crate::protocol::{ErrorCode, WireError};
use crate::session::{self, Inbound, Outbound};

/// Per-socket read buffer. Small on purpose: most sockets are idle and client frames are small;
/// larger frames still arrive (the buffer grows for them). tungstenite's default is 128 KiB.
const READ_BUFFER_BYTES: usize = 1024;
/// Bytes buffered before tungstenite writes through; our loop flushes after each batch anyway.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// Hard cap on a socket's unsent bytes; beyond it writes fail and the socket is dropped.
const MAX_WRITE_BUFFER_BYTES: usize = 1024 * 1024;
/// Frames up to this multiple of `limits.max_frame_bytes` are read and answered with
/// `frame_too_large`; bigger ones are cut by the WebSocket layer (close 1009).
const HARD_FRAME_LIMIT_FACTOR: usize = 4;

pub struct WebSocketEndpoint {
    node: Arc<Node>,
    upgrade: WebSocketUpgrade,
}

impl WebSocketEndpoint {
    pub fn new(node: Arc<Node>) -> Self {
        let hard_limit = node.settings().limits.max_frame_bytes * HARD_FRAME_LIMIT_FACTOR;
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(WRITE_BUFFER_BYTES)
            .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
            .max_message_size(Some(hard_limit))
            .max_frame_size(Some(hard_limit));
        WebSocketEndpoint {
            node,
            upgrade: WebSocketUpgrade::with_config(config),
        }
    }
}

fn reject(res: &mut Response, result: &'static str, error: &WireError) {
    metrics::counter!(names::HANDSHAKES, "result" => result).increment(1);
    metrics::counter!(names::CONNECTION_STATES, "state" => "rejected").increment(1);
    tracing::debug!(code = error.code.as_str(), message = %error.message, "socket REJECTED");
    render_error(res, error);
}

fn inbound_from(message: Result<Message, salvo::Error>) -> Inbound {
    match message {
        Ok(message) if message.is_text() => match message.as_str() {
            Ok(text) => Inbound::Text(text.to_owned()),
            Err(error) => Inbound::Failed(error.to_string()),
        },
        Ok(message) if message.is_binary() => Inbound::Binary,
        Ok(message) if message.is_ping() => Inbound::Ping,
        Ok(message) if message.is_pong() => Inbound::Pong,
        Ok(_) => Inbound::Close,
        Err(salvo::Error::Other(error))
            if matches!(error.downcast_ref(), Some(TungsteniteError::Capacity(_))) =>
        {
            Inbound::TooLarge
        }
        Err(error) => Inbound::Failed(error.to_string()),
    }
}

fn message_from(outbound: Outbound) -> Message {
    match outbound {
        Outbound::Text(frame) => {
            // Frames are serde_json output, so this check passes; it keeps bytes that came
            // over the network (broker) from ever reaching a client as invalid UTF-8.
            let bytes = frame.into_bytes();
            let text = Utf8Bytes::try_from(bytes.clone())
                .unwrap_or_else(|_| Utf8Bytes::from(String::from_utf8_lossy(&bytes).into_owned()));
            Message::text(text)
        }
        Outbound::Ping => Message::ping(Vec::new()),
        Outbound::Close(code) => Message::close_with(code.code(), code.reason()),
    }
}

#[async_trait]
impl Handler for WebSocketEndpoint {
    async fn handle(
        &self,
        req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        let started = Instant::now();
        metrics::counter!(names::CONNECTION_STATES, "state" => "connecting").increment(1);
        let identity = match bearer_token(req)
            .as_deref()
            .map(|token| self.node.verify_token(token))
        {
            Some(Ok(identity)) => identity,
            Some(Err(error)) => {
                return reject(
                    res,
                    "invalid_token",
                    &WireError::new(ErrorCode::InvalidToken, error.to_string()),
                );
            }
            None => {
                let error = WireError::new(
                    ErrorCode::InvalidToken,
                    crate::auth::AuthError::Missing.to_string(),
                );
                return reject(res, "invalid_token", &error);
            }
        };
        let Some(permit) = self.node.try_admit() else {
            let error = WireError::new(
                ErrorCode::NodeFull,
                "this node holds its maximum of connections; retry another node",
            );
            return reject(res, "node_full", &error);
        };
        metrics::counter!(names::CONNECTION_STATES, "state" => "authenticated").increment(1);
        tracing::debug!(user_id = %identity.user_id, "socket AUTHENTICATED");
        let node = self.node.clone();
        let upgraded = self
            .upgrade
            .upgrade(req, res, move |socket| async move {
                metrics::counter!(names::HANDSHAKES, "result" => "ok").increment(1);
                let (sink, stream) = socket.split();
                let outgoing = sink
                    .with(|outbound| future::ready(Ok::<_, salvo::Error>(message_from(outbound))));
                session::run(
                    node,
                    identity,
                    permit,
                    started,
                    stream.map(inbound_from),
                    Box::pin(outgoing),
                )
                .await;
            })
            .await;
        if let Err(status) = upgraded {
            metrics::counter!(names::HANDSHAKES, "result" => "bad_upgrade").increment(1);
            res.render(status);
        }
    }
}
