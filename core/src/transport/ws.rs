//! `GET /ws`: origin, token and admission checks before the upgrade, then the session loop.
//!
//! A refusal is an HTTP error before the upgrade, or, for handshakes that ask for it with
//! `?refusal=close` (browsers cannot read the status of a refused upgrade), a close code right
//! after it. Framing errors close with 1002, text that is not UTF-8 with 1007, and a client's
//! Close frame is answered with one (RFC 6455 sections 5.5.1, 7.4.1).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use futures_util::task::AtomicWaker;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use salvo::prelude::*;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Utf8Bytes};
use tokio_tungstenite::tungstenite::{Error as TungsteniteError, Message};

use super::client_address::TrustedProxies;
use super::lane::Lanes;
use super::origin::AllowedOrigins;
use super::upgrade::{self, ReadFailure, UpgradedSocket};
use super::{bearer_token, render_error};
use crate::hub::PushLane;
use crate::metrics as names;
use crate::node::{Applicant, Node};
use crate::protocol::{CloseCode, ErrorCode, WireError};
use crate::session::{self, Inbound, Outbound, SessionStart};

/// `GET /ws`, upgraded through [`upgrade`](super::upgrade) like `/graphql`.
pub struct WebSocketEndpoint {
    node: Arc<Node>,
    config: WebSocketConfig,
    lanes: Arc<Lanes>,
    allowed_origins: Arc<AllowedOrigins>,
    proxies: Arc<TrustedProxies>,
}

impl WebSocketEndpoint {
    pub fn new(
        node: Arc<Node>,
        lanes: Arc<Lanes>,
        allowed_origins: Arc<AllowedOrigins>,
        proxies: Arc<TrustedProxies>,
    ) -> Self {
        let config = upgrade::socket_config(node.settings().limits.max_frame_bytes);
        WebSocketEndpoint {
            node,
            config,
            lanes,
            allowed_origins,
            proxies,
        }
    }

    /// Refuses a handshake: an HTTP error response, or, for a valid upgrade that asked for
    /// `refusal=close`, an accepted upgrade that at once closes with the refusal's close code
    /// (4501 `invalid_token`, 4006 `node_full`, 4502 `origin_forbidden`). A browser shows every
    /// refused upgrade as the same 1006, so only the close tells the SDK an expired token from
    /// a full node. Other clients keep the refusal before the upgrade.
    fn refuse(
        &self,
        req: &mut Request,
        res: &mut Response,
        result: &'static str,
        error: WireError,
    ) {
        if !refusal_as_close_requested(req) {
            return reject(res, result, &error);
        }
        let Ok(accepted) = upgrade::accept(req, res, self.config, None) else {
            return reject(res, result, &error);
        };
        metrics::counter!(names::HANDSHAKES, "result" => result).increment(1);
        metrics::counter!(names::CONNECTION_STATES, "state" => "rejected").increment(1);
        metrics::counter!(names::ERRORS, "code" => error.code.as_str()).increment(1);
        tracing::debug!(code = error.code.as_str(), message = %error.message, "socket REJECTED with a close");
        let close = CloseCode::for_refusal(error.code);
        tokio::spawn(async move {
            let Some(mut socket) = accepted.into_socket().await else {
                return;
            };
            // Bounded like every close: the client gets the Close frame and a moment to answer.
            let _ = tokio::time::timeout(REFUSAL_CLOSE_TIMEOUT, async {
                socket.send(message_from(Outbound::Close(close))).await?;
                while socket.next().await.transpose()?.is_some() {}
                Ok::<(), TungsteniteError>(())
            })
            .await;
        });
    }
}

/// How long a refusal sent as a close keeps the connection for the client's closing handshake.
const REFUSAL_CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The handshake asked for refusals as close codes (`?refusal=close`; the SDK always does).
fn refusal_as_close_requested(req: &Request) -> bool {
    req.query::<String>("refusal").as_deref() == Some("close")
}

fn reject(res: &mut Response, result: &'static str, error: &WireError) {
    metrics::counter!(names::HANDSHAKES, "result" => result).increment(1);
    metrics::counter!(names::CONNECTION_STATES, "state" => "rejected").increment(1);
    tracing::debug!(code = error.code.as_str(), message = %error.message, "socket REJECTED");
    render_error(res, error);
}

fn inbound_from(message: Result<Message, TungsteniteError>) -> Inbound {
    match message {
        Ok(Message::Text(text)) => Inbound::Text(text.as_str().to_owned()),
        Ok(message) if message.is_binary() => Inbound::Binary,
        Ok(message) if message.is_ping() => Inbound::Ping,
        Ok(message) if message.is_pong() => Inbound::Pong,
        Ok(_) => Inbound::Close,
        Err(error) => match ReadFailure::of(error) {
            ReadFailure::TooLarge => Inbound::TooLarge,
            ReadFailure::ProtocolViolation(problem) => Inbound::ProtocolViolation(problem),
            ReadFailure::InvalidUtf8 => Inbound::InvalidUtf8,
            ReadFailure::Gone(problem) => Inbound::Failed(problem),
        },
    }
}

fn message_from(outbound: Outbound) -> Message {
    match outbound {
        Outbound::Text(frame) => {
            // A `Frame` is UTF-8 by construction (serde_json output, or checked by
            // `Frame::from_encoded`), so this check cannot fail. It runs only for frames this
            // socket's own task writes (replies, and pushes on the rare sockets without a write
            // lane); broadcasts reach sockets through the lane, which frames them itself.
            let text =
                Utf8Bytes::try_from(frame.into_bytes()).expect("a Frame is UTF-8 by construction");
            Message::Text(text)
        }
        Outbound::Ping => Message::Ping(Default::default()),
        Outbound::Close(code) => Message::Close(Some(CloseFrame {
            code: code.code().into(),
            reason: code.reason().into(),
        })),
    }
}

/// The upgraded WebSocket as the session loop sees it: one object for both directions. Not
/// `StreamExt::split` halves: those share the socket through a lock taken on every read and
/// write, and the session's single task never needs two owners.
struct SessionSocket {
    websocket: UpgradedSocket,
    /// Woken by the socket when its read side may have progressed.
    read_wake: Arc<ReadWake>,
    /// `read_wake` as a waker, made once: the read side is always polled with it.
    read_waker: Waker,
    /// The last read attempt found nothing; until `read_wake` fires, another would find nothing
    /// too. The session polls the read side on every loop turn, after every write or drain, and
    /// a futile attempt through tungstenite is not free (docs/benchmarks.md, "Where the limits
    /// come from"); skipping it while nothing arrived is what this flag is for.
    read_idle: bool,
}

/// The waker the read side is polled with: it notes that reading may progress, then wakes the
/// session's task.
#[derive(Default)]
struct ReadWake {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ReadWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl SessionSocket {
    fn new(websocket: UpgradedSocket) -> SessionSocket {
        let read_wake = Arc::new(ReadWake::default());
        SessionSocket {
            websocket,
            read_waker: Waker::from(read_wake.clone()),
            read_wake,
            read_idle: false,
        }
    }
}

impl Stream for SessionSocket {
    type Item = Inbound;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Inbound>> {
        let this = &mut *self;
        // Registered before the flag is read, so a wake in between is not lost.
        this.read_wake.task.register(cx.waker());
        let woken = this.read_wake.woken.swap(false, Ordering::AcqRel);
        if this.read_idle && !woken {
            return Poll::Pending;
        }
        let mut read_context = Context::from_waker(&this.read_waker);
        let polled = this.websocket.poll_next_unpin(&mut read_context);
        // Pending means tungstenite's buffer holds no whole frame and the socket had no bytes;
        // the socket then wakes `read_wake` when bytes arrive.
        this.read_idle = polled.is_pending();
        polled.map(|message| message.map(inbound_from))
    }
}

impl Sink<Outbound> for SessionSocket {
    type Error = TungsteniteError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.websocket.poll_ready_unpin(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, outbound: Outbound) -> Result<(), Self::Error> {
        self.websocket.start_send_unpin(message_from(outbound))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.websocket.poll_flush_unpin(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.websocket.poll_close_unpin(cx)
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
        // Debug level, like every per-connection span: free where debug logs are off.
        let span = tracing::debug_span!("handshake", peer = %req.remote_addr());
        tracing::Instrument::instrument(self.handshake(req, res), span).await;
    }
}

impl WebSocketEndpoint {
    /// Origin, draining, token and admission checks, then the upgrade; the socket's session runs
    /// in a task of its own.
    async fn handshake(&self, req: &mut Request, res: &mut Response) {
        let started = Instant::now();
        metrics::counter!(names::CONNECTION_STATES, "state" => "connecting").increment(1);
        if let Err(error) = self.allowed_origins.check(req) {
            return self.refuse(req, res, "origin_forbidden", error);
        }
        if self.node.is_draining() {
            let error = WireError::new(
                ErrorCode::Unavailable,
                "this node is shutting down; connect to another node",
            );
            return self.refuse(req, res, "draining", error);
        }
        let verified = match bearer_token(req) {
            Some(token) => Some(self.node.verify_token(&token).await),
            None => None,
        };
        let identity = match verified {
            Some(Ok(identity)) => identity,
            Some(Err(error)) => {
                let error = WireError::new(ErrorCode::InvalidToken, error.to_string());
                return self.refuse(req, res, "invalid_token", error);
            }
            None => {
                let error = WireError::new(
                    ErrorCode::InvalidToken,
                    crate::auth::AuthError::Missing.to_string(),
                );
                return self.refuse(req, res, "invalid_token", error);
            }
        };
        let applicant = Applicant {
            user_id: Some(Arc::from(identity.user_id.as_str())),
            address: self.proxies.client_address(req),
        };
        let permit = match self.node.try_admit(&applicant) {
            Ok(permit) => permit,
            Err(error) => return self.refuse(req, res, error.code.as_str(), error),
        };
        metrics::counter!(names::CONNECTION_STATES, "state" => "authenticated").increment(1);
        tracing::debug!(user_id = %identity.user_id, "socket AUTHENTICATED");
        let accepted = match upgrade::accept(req, res, self.config, None) {
            Ok(accepted) => accepted,
            Err(problem) => {
                let error = WireError::new(ErrorCode::InvalidRequest, problem);
                return reject(res, "bad_upgrade", &error);
            }
        };
        let push_lane = req
            .local_addr()
            .clone()
            .into_std()
            .zip(req.remote_addr().clone().into_std())
            .and_then(|connection| self.lanes.take(&connection))
            .map(|lane| lane as Arc<dyn PushLane>);
        let start = Box::new(SessionStart {
            node: self.node.clone(),
            identity,
            permit,
            handshake_started: started,
            push_lane,
        });
        // The 101 goes out when this handler returns; the upgraded stream arrives after that.
        tokio::spawn(async move {
            let Some(socket) = accepted.into_socket().await else {
                metrics::counter!(names::HANDSHAKES, "result" => "upgrade_failed").increment(1);
                return;
            };
            metrics::counter!(names::HANDSHAKES, "result" => "ok").increment(1);
            // Boxed: an async fn keeps its arguments for its whole life, so passed inline the
            // socket would take its size twice in every connection's task.
            let socket = Box::new(SessionSocket::new(socket));
            // Debug level: a span per connection costs memory only where debug logs are on, and
            // then in a box of its own, so that the task of every connection does not carry the
            // instrumentation's size when they are off.
            let span = tracing::debug_span!(
                "socket",
                user_id = %start.identity.user_id,
                socket_id = tracing::field::Empty
            );
            if span.is_disabled() {
                session::run(start, socket).await;
            } else {
                Box::pin(tracing::Instrument::instrument(
                    session::run(start, socket),
                    span,
                ))
                .await;
            }
        });
    }
}
