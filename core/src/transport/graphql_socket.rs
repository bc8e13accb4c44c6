//! One GraphQL WebSocket (`graphql-transport-ws`, or the older `graphql-ws`) held to the same
//! rules as `/ws`: it is upgraded the same way (`upgrade`: the same request checks and socket
//! settings), it counts toward `server.max_connections` (the caller holds the permit), its
//! messages are capped at `limits.max_frame_bytes` (close 1009 beyond), framing errors close with
//! 1002 and text that is not UTF-8 with 1007, a client's Close is answered with one,
//! `connection_init` must come within `graphql.connection_init_timeout_secs` (close 4408), the
//! token's expiry ends it (close 4401, as `/ws` closes with 4001), and it runs at most
//! `graphql.max_operations_per_socket` operations at once (more are answered with an `error`
//! message, code `TOO_MANY_OPERATIONS`).
//!
//! async-graphql speaks the protocol; this loop owns the socket around it: it filters what
//! reaches async-graphql, writes what it answers, and decides when the socket ends.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::Data;
use async_graphql::http::{WebSocketProtocols, WsMessage};
use futures_util::{SinkExt, Stream, StreamExt};
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use super::upgrade::{ReadFailure, UpgradedSocket};
use crate::auth::unix_now_secs;
use crate::graphql::{RealtimeSchema, Viewer};
use crate::node::{ConnectionPermit, Node};
use crate::protocol::CloseCode;

/// graphql-transport-ws: `connection_init` did not come in time.
const CLOSE_INIT_TIMEOUT: (u16, &str) = (4408, "Connection initialisation timeout");
/// graphql-transport-ws: the session's token is no longer valid.
const CLOSE_UNAUTHORIZED: (u16, &str) = (4401, "Unauthorized: the token expired");
/// How long the socket's last words (its Close frame, or the answer to the client's) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A close code as this loop passes it on: (code, reason).
fn close_of(code: CloseCode) -> (u16, &'static str) {
    (code.code(), code.reason())
}

/// The limits one GraphQL socket is held to.
#[derive(Debug, Clone, Copy)]
pub struct GraphqlSocketLimits {
    pub max_frame_bytes: usize,
    pub init_timeout: Duration,
    pub max_operations: usize,
    pub leeway_secs: u64,
}

impl GraphqlSocketLimits {
    pub fn from_node(node: &Node) -> GraphqlSocketLimits {
        let settings = node.settings();
        GraphqlSocketLimits {
            max_frame_bytes: settings.limits.max_frame_bytes,
            init_timeout: Duration::from_secs(settings.graphql.connection_init_timeout_secs),
            max_operations: settings.graphql.max_operations_per_socket,
            leeway_secs: settings.auth.leeway_secs,
        }
    }
}

/// Where the session stands, as the loop needs it for its one deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Session {
    AwaitingInit,
    /// Authenticated until this Unix second (the token's `exp` plus the leeway).
    ValidUntil(u64),
    /// No valid token: every operation is refused as `UNAUTHENTICATED`; nothing expires.
    Anonymous,
}

/// The fields of a protocol message this loop looks at.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a str>,
    id: Option<String>,
}

fn envelope(text: &str) -> Option<Envelope<'_>> {
    serde_json::from_str(text).ok()
}

/// Ids of the operations running on the socket: added by `subscribe` (`start` in graphql-ws),
/// removed by the client's `complete` (`stop`) or the server's `complete` or `error`.
#[derive(Default)]
struct RunningOperations(Mutex<HashSet<String>>);

impl RunningOperations {
    /// Admits an incoming operation; false when `max` are already running.
    fn admit(&self, id: &str, max: usize) -> bool {
        let mut running = self.0.lock();
        if running.contains(id) {
            // A duplicate id: async-graphql answers it per protocol.
            return true;
        }
        if running.len() >= max {
            return false;
        }
        running.insert(id.to_owned());
        true
    }

    fn finished(&self, id: &str) {
        self.0.lock().remove(id);
    }
}

/// What the reading side tells the loop when it stops.
#[derive(Default)]
struct ReadEnd(Mutex<Option<(u16, &'static str)>>);

/// The `error` message refusing operation `id` over the cap.
fn too_many_operations(id: &str, max: usize) -> String {
    serde_json::json!({
        "id": id,
        "type": "error",
        "payload": [{
            "message": format!("at most {max} operations may run on one socket"),
            "extensions": { "code": "TOO_MANY_OPERATIONS" }
        }]
    })
    .to_string()
}

/// The client's text messages as async-graphql reads them, minus operations over the cap (those
/// are answered through `refusals`). Ends at the client's close or a transport error.
fn incoming_messages(
    stream: impl Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
    + Send
    + Unpin
    + 'static,
    limits: GraphqlSocketLimits,
    operations: Arc<RunningOperations>,
    refusals: mpsc::UnboundedSender<String>,
    read_end: Arc<ReadEnd>,
) -> impl Stream<Item = Vec<u8>> + Send + Unpin + 'static {
    Box::pin(futures_util::stream::unfold(stream, move |mut stream| {
        let (operations, refusals, read_end) =
            (operations.clone(), refusals.clone(), read_end.clone());
        async move {
            loop {
                let message = match stream.next().await? {
                    Ok(message) => message,
                    Err(error) => {
                        let failure = ReadFailure::of(error);
                        tracing::debug!(?failure, "graphql socket read failed");
                        *read_end.0.lock() = failure.close_code().map(close_of);
                        return None;
                    }
                };
                let Message::Text(text) = message else {
                    if message.is_close() {
                        return None;
                    }
                    continue;
                };
                // The socket layer reads up to four times the limit whole (see `upgrade`); this
                // protocol has no error reply for an oversized message, so it closes.
                if text.len() > limits.max_frame_bytes {
                    *read_end.0.lock() = Some(close_of(CloseCode::MessageTooBig));
                    return None;
                }
                if let Some(Envelope { kind, id: Some(id) }) = envelope(&text) {
                    match kind {
                        Some("subscribe" | "start")
                            if !operations.admit(&id, limits.max_operations) =>
                        {
                            let _ = refusals.send(too_many_operations(&id, limits.max_operations));
                            continue;
                        }
                        Some("complete" | "stop") => operations.finished(&id),
                        _ => {}
                    }
                }
                return Some((text.as_bytes().to_vec(), stream));
            }
        }
    }))
}

/// The deadline of the session's current state, if any.
fn deadline_of(session: Session, init_deadline: Instant) -> Option<(Instant, (u16, &'static str))> {
    match session {
        Session::AwaitingInit => Some((init_deadline, CLOSE_INIT_TIMEOUT)),
        Session::ValidUntil(until) => {
            let remaining = Duration::from_secs(until.saturating_sub(unix_now_secs()));
            Some((Instant::now() + remaining, CLOSE_UNAUTHORIZED))
        }
        Session::Anonymous => None,
    }
}

/// Runs one upgraded GraphQL socket until it ends. `upgrade_viewer` is who the upgrade request's
/// own token (if any) says; a token in `connection_init` replaces it.
pub async fn run(
    socket: UpgradedSocket,
    schema: RealtimeSchema,
    protocol: WebSocketProtocols,
    node: Arc<Node>,
    upgrade_viewer: Viewer,
    limits: GraphqlSocketLimits,
    _permit: ConnectionPermit,
) {
    let (mut sink, stream) = socket.split();
    let operations = Arc::new(RunningOperations::default());
    let read_end = Arc::new(ReadEnd::default());
    let (refusals, mut refused) = mpsc::unbounded_channel();
    let (session_sender, mut session) = watch::channel(Session::AwaitingInit);
    let incoming = incoming_messages(
        stream,
        limits,
        operations.clone(),
        refusals,
        read_end.clone(),
    );
    let mut outgoing = async_graphql::http::WebSocket::new(schema, incoming, protocol)
        .on_connection_init(move |payload| async move {
            let viewer = match super::graphql::token_from_init_payload(&payload) {
                Some(token) => super::graphql::viewer_for(&node, Some(&token)).await,
                None => upgrade_viewer,
            };
            let state = match &viewer {
                Viewer::User(identity) => {
                    Session::ValidUntil(identity.expires_at.saturating_add(limits.leeway_secs))
                }
                Viewer::Anonymous(_) => Session::Anonymous,
            };
            let _ = session_sender.send(state);
            let mut data = Data::default();
            data.insert(viewer);
            Ok(data)
        });
    let init_deadline = Instant::now() + limits.init_timeout;
    // The init callback (holding the sender) is dropped once it ran; after that the session
    // state no longer changes.
    let mut session_may_change = true;
    let close = loop {
        let deadline = deadline_of(*session.borrow_and_update(), init_deadline);
        let expiry = async {
            match deadline {
                Some((at, close)) => {
                    tokio::time::sleep_until(at).await;
                    close
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            message = outgoing.next() => match message {
                Some(WsMessage::Text(text)) => {
                    if let Some(Envelope { kind: Some("complete" | "error"), id: Some(id) }) = envelope(&text) {
                        operations.finished(&id);
                    }
                    if sink.send(Message::text(text)).await.is_err() {
                        break None;
                    }
                }
                Some(WsMessage::Close(code, reason)) => break Some((code, reason)),
                None => break read_end.0.lock().take().map(|(code, reason)| (code, reason.to_owned())),
            },
            Some(refusal) = refused.recv() => {
                if sink.send(Message::text(refusal)).await.is_err() {
                    break None;
                }
            }
            changed = session.changed(), if session_may_change => {
                session_may_change = changed.is_ok();
            }
            (code, reason) = expiry => break Some((code, reason.to_owned())),
        }
    };
    // Our Close frame, if the server ends the socket; then `close` flushes it, or the answer
    // tungstenite queued to the client's own Close (RFC 6455 section 5.5.1). Bounded: a client
    // that reads nothing must not hold the task.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if let Some((code, reason)) = close {
            let frame = CloseFrame {
                code: code.into(),
                reason: reason.into(),
            };
            sink.send(Message::Close(Some(frame))).await?;
        }
        sink.close().await
    })
    .await;
}
