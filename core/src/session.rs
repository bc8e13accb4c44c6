//! One connection's loop: a single `select!` over the socket, the outbox, timers and shutdown.
//!
//! Transport-free: the WebSocket is seen as one object, a stream of [`Inbound`] and a sink of
//! [`Outbound`], which `transport` adapts. Replies are written directly; pushes arrive through the
//! socket's bounded outbox and are written in batches with one flush.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use serde_json::json;
use tokio::time::Instant;

use crate::auth::{Identity, unix_now_secs};
use crate::hub::{PushLane, Signal, SocketHandle};
use crate::metrics as names;
use crate::node::{ConnectionPermit, Joined, Node, SocketSession};
use crate::protocol::{
    CloseCode, Connected, ErrorCode, Frame, Position, Request, RequestId, WireError, parse_request,
};
use crate::room::RoomId;

/// A frame from the client, as the transport hands it over.
#[derive(Debug)]
pub enum Inbound {
    Text(String),
    Binary,
    /// A WebSocket ping (the transport answers it) or pong: both prove the client is alive.
    Ping,
    Pong,
    /// The client's Close frame. The transport has queued the answering Close frame (RFC 6455
    /// section 5.5.1: an endpoint that receives a Close MUST send one back); flushing the sink
    /// sends it.
    Close,
    /// A frame beyond the transport's hard size limit; the frame was discarded.
    TooLarge,
    /// The client broke the WebSocket framing rules (answered with 1002).
    ProtocolViolation(String),
    /// A text frame that is not UTF-8 (answered with 1007).
    InvalidUtf8,
    /// The transport failed (I/O error, connection reset); nothing can be sent any more.
    Failed(String),
}

/// A frame for the client.
#[derive(Debug)]
pub enum Outbound {
    Text(Frame),
    Ping,
    Close(CloseCode),
}

/// Most queued pushes written before one flush: coalesces bursts into fewer syscalls while
/// bounding how long replies wait behind pushes.
const WRITE_BATCH: usize = 64;
/// A write that cannot complete in this time means the client stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the client's close reply after sending a close frame.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Token bucket for a connection's requests: `burst` at once, `per_sec` sustained.
struct RequestBudget {
    burst: f64,
    per_sec: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl RequestBudget {
    fn new(per_sec: u32, burst: u32, now: Instant) -> Self {
        RequestBudget {
            burst: f64::from(burst),
            per_sec: f64::from(per_sec),
            tokens: f64::from(burst),
            refilled_at: now,
        }
    }

    fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why the loop ended.
/// Frames a slow-consumer close reads past, looking for the client's own Close.
const CLOSE_PEEK_FRAMES: usize = 32;

enum Ending {
    /// Send this close code, then finish the close handshake.
    Close(CloseCode),
    /// The client sent a Close frame: the answering Close goes out, then the connection ends.
    ClosedByClient,
    /// The connection broke; nothing more can be sent.
    Gone(&'static str),
}

/// The state one connection's loop carries.
/// A request's answer: the reply's extra fields, and for a join that recovered history, the
/// events to write right after the reply.
#[derive(Default)]
struct Answer {
    fields: Option<serde_json::Value>,
    replay: Option<Replay>,
}

/// A join's replay (see `node::JoinedHistory`).
struct Replay {
    room: RoomId,
    position: Option<Position>,
    frames: Vec<Frame>,
}

impl Answer {
    fn fields(fields: serde_json::Value) -> Answer {
        Answer {
            fields: Some(fields),
            replay: None,
        }
    }

    /// `{"room":..}`, and in a room with history `"offset"`, `"epoch"` (when known);
    /// `"recovered"` whenever the join carried `since` (false where nothing could be replayed:
    /// a room without history, or one the socket was already in).
    fn joined(joined: Joined, with_since: bool) -> Answer {
        let mut fields = serde_json::Map::new();
        fields.insert("room".into(), json!(joined.room.as_str()));
        let Some(history) = joined.history else {
            if with_since {
                fields.insert("recovered".into(), json!(false));
            }
            return Answer::fields(serde_json::Value::Object(fields));
        };
        if let Some(position) = &history.position {
            fields.insert("offset".into(), json!(position.offset));
            fields.insert("epoch".into(), json!(position.epoch.as_ref()));
        }
        if let Some(recovered) = history.recovered {
            fields.insert("recovered".into(), json!(recovered));
        }
        Answer {
            fields: Some(serde_json::Value::Object(fields)),
            replay: Some(Replay {
                room: joined.room,
                position: history.position,
                frames: history.replay,
            }),
        }
    }
}

struct Connection<K> {
    node: Arc<Node>,
    /// Holds the node's connection slot until the connection is dropped.
    _permit: ConnectionPermit,
    session: SocketSession,
    /// The WebSocket, both directions: only this loop reads and writes it.
    socket: K,
    budget: RequestBudget,
    rate_limited_in_a_row: u32,
    last_activity: Instant,
    /// Whether the client sent a `heartbeat` op or a ping (the frames that keep it present
    /// unprompted) since the last keepalive check; see [`plan_keepalive`].
    heartbeat_since_keepalive: bool,
    /// When the client last showed it is alive (`heartbeat` op, ping or pong): the keepalive
    /// counts from it. Nothing is written anywhere: the node's lease keeps its sockets present.
    last_heartbeat: Instant,
    token_deadline: Instant,
}

/// Converts a token expiry (Unix seconds) into a deadline on tokio's clock, with the leeway.
fn token_deadline(expires_at: u64, leeway_secs: u64) -> Instant {
    let remaining = (expires_at + leeway_secs).saturating_sub(unix_now_secs());
    Instant::now() + Duration::from_secs(remaining)
}

/// What a connection starts from, handed over in one box: an async fn keeps its arguments for
/// its whole life, so passed one by one they would take ~170 bytes in every idle connection's
/// task (and the spawning task's captures as many again) instead of one pointer.
pub struct SessionStart {
    pub node: Arc<Node>,
    pub identity: Identity,
    /// Holds the connection's admission slot for as long as it lives.
    pub permit: ConnectionPermit,
    pub handshake_started: std::time::Instant,
    /// When the transport offers one, fan-outs write pushes to the socket themselves through it;
    /// without it they queue for the connection's loop.
    pub push_lane: Option<Arc<dyn PushLane>>,
}

/// Runs an authenticated connection until it ends.
pub async fn run<K>(start: Box<SessionStart>, socket: K)
where
    K: Stream<Item = Inbound> + Sink<Outbound> + Unpin + Send,
{
    let handshake_started = start.handshake_started;
    // Boxed, like every once-per-connection step: the task keeps the size of its largest state
    // for the connection's whole life, and 10,000 idle sockets should not carry these. The
    // connection itself is boxed too: held inline, rustc keeps a second slot for it.
    let opened = Box::pin(Connection::open(start, socket)).await;
    let Some(mut connection) = opened else {
        return;
    };
    tracing::Span::current().record("socket_id", &*connection.session.entry.socket_id);
    let ending = connection.serve(handshake_started).await;
    // Before the close frame: no data frame may follow it.
    connection.session.handle.stop_pushes();
    let reason = match ending {
        Ending::Close(code) => {
            metrics::counter!(names::CLOSES, "reason" => code.reason()).increment(1);
            Box::pin(connection.close(code)).await;
            code.reason()
        }
        Ending::ClosedByClient => {
            Box::pin(connection.answer_client_close()).await;
            "client_closed"
        }
        Ending::Gone(reason) => reason,
    };
    metrics::counter!(names::CONNECTION_STATES, "state" => "disconnected").increment(1);
    tracing::debug!(
        socket_id = %connection.session.entry.socket_id,
        user_id = %connection.session.entry.user_id,
        reason,
        "socket DISCONNECTED"
    );
    let node = connection.node.clone();
    Box::pin(node.close_socket(&mut connection.session, reason)).await;
}

impl<K> Connection<K>
where
    K: Stream<Item = Inbound> + Sink<Outbound> + Unpin + Send,
{
    /// Registers the socket with the node; `None` (after telling the client) when the backends
    /// cannot take it.
    async fn open(start: Box<SessionStart>, mut socket: K) -> Option<Box<Connection<K>>> {
        let SessionStart {
            node,
            identity,
            permit,
            push_lane,
            ..
        } = *start;
        let session = match node.open_socket(identity, push_lane).await {
            Ok(session) => session,
            Err(error) => {
                tracing::warn!(message = %error.message, "could not register socket");
                let _ = socket
                    .send(Outbound::Close(CloseCode::BackendUnavailable))
                    .await;
                return None;
            }
        };
        let settings = node.settings();
        let now = Instant::now();
        Some(Box::new(Connection {
            budget: RequestBudget::new(
                settings.limits.requests_per_sec,
                settings.limits.request_burst,
                now,
            ),
            rate_limited_in_a_row: 0,
            last_activity: now,
            heartbeat_since_keepalive: false,
            last_heartbeat: now,
            token_deadline: token_deadline(session.identity.expires_at, settings.auth.leeway_secs),
            _permit: permit,
            session,
            socket,
            node,
        }))
    }

    async fn serve(&mut self, handshake_started: std::time::Instant) -> Ending {
        let presence = &self.node.settings().presence;
        let (idle_limit, keepalive_interval) = (presence.ttl(), presence.heartbeat_interval());
        let hello = Frame::connected(&Connected {
            kind: "connected",
            socket_id: &self.session.entry.socket_id,
            user_id: &self.session.entry.user_id,
            node: self.node.node_id(),
            heartbeat_interval_ms: presence.heartbeat_interval_secs * 1000,
            expires_at: self.session.identity.expires_at,
        });
        if let Err(hello) = self.session.handle.start_pushes(hello)
            && !self.write(Outbound::Text(hello)).await
        {
            return self.ending_after_failed_write();
        }
        metrics::histogram!(names::HANDSHAKE_SECONDS)
            .record(handshake_started.elapsed().as_secs_f64());
        metrics::counter!(names::CONNECTION_STATES, "state" => "connected").increment(1);
        metrics::counter!(names::MESSAGES_OUT, "kind" => "connected").increment(1);
        tracing::debug!(socket_id = %self.session.entry.socket_id, user_id = %self.session.entry.user_id, "socket CONNECTED");

        // The connect counts as a heartbeat: a client heartbeating from its `connected` frame on
        // is never pinged, a quiet one first a slack after one interval.
        let connected = Instant::now();
        let mut next_keepalive = plan_keepalive(KeepaliveCheck {
            now: connected,
            heartbeat_since_check: true,
            last_heartbeat: self.last_heartbeat,
            interval: keepalive_interval,
            ttl: idle_limit,
        })
        .next_check;
        // One timer for both the keepalive and the token expiry, reset only when one of them
        // moves: a timer per loop turn would touch the runtime's timer wheel on every push.
        let timer = tokio::time::sleep_until(next_keepalive.min(self.token_deadline));
        tokio::pin!(timer);
        let handle = self.session.handle.clone();
        loop {
            tokio::select! {
                biased;
                signal = handle.signalled() => match signal {
                    Signal::Close(code) => return self.ending_for_requested_close(code),
                    Signal::Evicted => {
                        // Boxed: rare, and its backend calls are large state.
                        if let Some(ending) = Box::pin(self.leave_evicted_rooms(&handle)).await {
                            return ending;
                        }
                    }
                    Signal::Frames => {
                        if !self.write_pushes(&handle).await {
                            return self.ending_after_failed_write();
                        }
                    }
                },
                () = &mut timer => {
                    let now = Instant::now();
                    if now >= self.token_deadline {
                        return Ending::Close(CloseCode::TokenExpired);
                    }
                    if now >= next_keepalive {
                        if self.last_activity.elapsed() >= idle_limit {
                            return Ending::Close(CloseCode::HeartbeatTimeout);
                        }
                        let plan = plan_keepalive(KeepaliveCheck {
                            now,
                            heartbeat_since_check: std::mem::take(
                                &mut self.heartbeat_since_keepalive,
                            ),
                            last_heartbeat: self.last_heartbeat,
                            interval: keepalive_interval,
                            ttl: idle_limit,
                        });
                        // Boxed: once per heartbeat interval, and inline it would be this
                        // loop's largest state.
                        if plan.ping && !Box::pin(self.write(Outbound::Ping)).await {
                            return self.ending_after_failed_write();
                        }
                        next_keepalive = plan.next_check;
                    }
                }
                inbound = self.socket.next() => {
                    let inbound = inbound.unwrap_or(Inbound::Close);
                    // Boxed: request handling (joins, store calls) is this loop's largest state;
                    // inline, every idle connection's task would be as big as a join.
                    if let Some(ending) = Box::pin(self.on_inbound(inbound)).await {
                        return ending;
                    }
                }
            }
            let next_timer = next_keepalive.min(self.token_deadline);
            if timer.deadline() != next_timer {
                timer.as_mut().reset(next_timer);
            }
        }
    }

    /// Writes one frame and flushes it. False when the connection is unusable, or when a close
    /// was requested meanwhile (a client that stops reading blocks writes; the slow-consumer
    /// close must still win).
    async fn write(&mut self, frame: Outbound) -> bool {
        let mut unsent = Some(frame);
        self.sink_step(move |sink, cx| {
            if let Some(frame) = unsent.take() {
                match sink.poll_ready_unpin(cx) {
                    Poll::Ready(Ok(())) => sink.start_send_unpin(frame)?,
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending => {
                        unsent = Some(frame);
                        return Poll::Pending;
                    }
                }
            }
            sink.poll_flush_unpin(cx)
        })
        .await
    }

    /// Drives one sink step (ready or flush) to its end. It almost always completes on the first
    /// poll; only then is the wait for a client that is not reading set up, bounded by
    /// `WRITE_TIMEOUT` and cut short by a close request. That wait is boxed because it is rare
    /// and large (a timer and a waiter): inline it would sit in every idle connection's task.
    async fn sink_step<F>(&mut self, mut step: F) -> bool
    where
        F: FnMut(&mut K, &mut Context<'_>) -> Poll<Result<(), K::Error>> + Send,
    {
        let socket = &mut self.socket;
        let first = std::future::poll_fn(|cx| Poll::Ready(step(socket, cx))).await;
        match first {
            Poll::Ready(result) => result.is_ok(),
            Poll::Pending => {
                let handle = self.session.handle.clone();
                let finished = std::future::poll_fn(move |cx| step(socket, cx));
                Box::pin(async move {
                    tokio::select! {
                        biased;
                        result = tokio::time::timeout(WRITE_TIMEOUT, finished) => {
                            matches!(result, Ok(Ok(())))
                        }
                        _ = handle.close_requested() => false,
                    }
                })
                .await
            }
        }
    }

    /// What ends the loop after a failed write: a requested close, or a broken connection.
    /// The ending for a close the node requested. A slow-consumer close is checked against what
    /// the client already sent: a client whose Close frame (or end of stream) waits to be read
    /// left on its own, and its outbox filled only because it stopped reading on its way out (a
    /// mass disconnect, with every leave announced to the members still there).
    fn ending_for_requested_close(&mut self, code: CloseCode) -> Ending {
        if code != CloseCode::SlowConsumer {
            return Ending::Close(code);
        }
        for _ in 0..CLOSE_PEEK_FRAMES {
            match self.socket.next().now_or_never() {
                Some(None | Some(Inbound::Close)) => return Ending::ClosedByClient,
                Some(Some(Inbound::Failed(_))) => return Ending::Gone("transport_error"),
                // Read on the way to its Close: the connection ends either way.
                Some(Some(_)) => continue,
                None => break,
            }
        }
        Ending::Close(code)
    }

    fn ending_after_failed_write(&self) -> Ending {
        match self.session.handle.requested_close_code() {
            Some(code) => Ending::Close(code),
            None => Ending::Gone("write_failed"),
        }
    }

    /// Writes what is queued (up to a batch), then flushes once: one syscall for a burst. With
    /// a push lane nothing is queued here, and the flush drains the lane's backlog.
    /// A frame leaves the outbox only when the sink can take it, so the wait for a slow client
    /// holds no frame.
    /// `handle` is this socket's own (the loop's copy, so no reference count moves per batch).
    async fn write_pushes(&mut self, handle: &SocketHandle) -> bool {
        let mut batch = 0;
        self.sink_step(|sink, cx| {
            while batch < WRITE_BATCH {
                match sink.poll_ready_unpin(cx) {
                    Poll::Ready(Ok(())) => {}
                    other => return other,
                }
                let Some(frame) = handle.next_frame() else {
                    break;
                };
                sink.start_send_unpin(Outbound::Text(frame))?;
                batch += 1;
            }
            sink.poll_flush_unpin(cx)
        })
        .await
    }

    async fn reply(&mut self, frame: Frame) -> Option<Ending> {
        metrics::counter!(names::MESSAGES_OUT, "kind" => "reply").increment(1);
        if self.write(Outbound::Text(frame)).await {
            None
        } else {
            Some(self.ending_after_failed_write())
        }
    }

    async fn reply_error(&mut self, id: Option<&RequestId>, error: &WireError) -> Option<Ending> {
        metrics::counter!(names::ERRORS, "code" => error.code.as_str()).increment(1);
        self.reply(Frame::reply_error(id, error)).await
    }

    async fn on_inbound(&mut self, inbound: Inbound) -> Option<Ending> {
        let now = Instant::now();
        self.last_activity = now;
        match inbound {
            Inbound::Text(text) => self.on_text(&text, now).await,
            Inbound::Ping => {
                self.heartbeat_since_keepalive = true;
                self.last_heartbeat = now;
                None
            }
            // A pong does not spare the next ping: it only answers one.
            Inbound::Pong => {
                self.last_heartbeat = now;
                None
            }
            Inbound::Binary => Some(Ending::Close(CloseCode::UnsupportedData)),
            Inbound::TooLarge => Some(Ending::Close(CloseCode::MessageTooBig)),
            Inbound::Close => Some(Ending::ClosedByClient),
            Inbound::ProtocolViolation(problem) => {
                tracing::debug!(%problem, "WebSocket protocol violation");
                Some(Ending::Close(CloseCode::ProtocolError))
            }
            Inbound::InvalidUtf8 => Some(Ending::Close(CloseCode::InvalidPayload)),
            Inbound::Failed(problem) => {
                tracing::debug!(%problem, "transport failed");
                Some(Ending::Gone("transport_error"))
            }
        }
    }

    /// Handles one request and writes its reply, with pushes held back meanwhile: a reply
    /// goes before pushes that arrived while its request was handled, as clients expect (the
    /// events of a room after the reply to its join).
    async fn on_text(&mut self, text: &str, now: Instant) -> Option<Ending> {
        self.session.handle.hold_pushes();
        let ending = self.answer_request(text, now).await;
        self.session.handle.release_pushes();
        ending
    }

    async fn answer_request(&mut self, text: &str, now: Instant) -> Option<Ending> {
        let limits = &self.node.settings().limits;
        // An oversized frame is not parsed, but it is a request like any other: it takes from
        // the budget, so a flood of them is limited and then closed like any flood.
        let parsed = (text.len() <= limits.max_frame_bytes).then(|| parse_request(text));
        if !self.budget.try_take(now) {
            self.rate_limited_in_a_row += 1;
            if self.rate_limited_in_a_row > limits.rate_limit_close_after {
                return Some(Ending::Close(CloseCode::RateLimited));
            }
            let id = match &parsed {
                Some(Ok((id, _))) => id.clone(),
                Some(Err(rejected)) => rejected.id.clone(),
                None => None,
            };
            let error = WireError::new(ErrorCode::RateLimited, "too many requests; slow down");
            return self.reply_error(id.as_ref(), &error).await;
        }
        self.rate_limited_in_a_row = 0;
        let Some(parsed) = parsed else {
            metrics::counter!(names::MESSAGES_IN, "kind" => "invalid").increment(1);
            let error = WireError::new(
                ErrorCode::FrameTooLarge,
                format!("frames are limited to {} bytes", limits.max_frame_bytes),
            );
            return self.reply_error(None, &error).await;
        };
        match parsed {
            Err(rejected) => {
                metrics::counter!(names::MESSAGES_IN, "kind" => "invalid").increment(1);
                self.reply_error(rejected.id.as_ref(), &rejected.error)
                    .await
            }
            Ok((id, request)) => {
                let outcome = self.dispatch(request, now).await;
                match outcome {
                    Ok(answer) => {
                        let ending = self
                            .reply(Frame::reply_ok(id.as_ref(), answer.fields.as_ref()))
                            .await;
                        match answer.replay {
                            Some(replay) => self.write_replay(replay, ending).await,
                            None => ending,
                        }
                    }
                    Err(error) => self.reply_error(id.as_ref(), &error).await,
                }
            }
        }
    }

    /// Writes a join's replayed events right after its reply (unless the reply could not be
    /// written), then lets the room's pushes kept aside meanwhile follow, without those the
    /// replay carried.
    async fn write_replay(&mut self, replay: Replay, ending: Option<Ending>) -> Option<Ending> {
        let mut ending = ending;
        for frame in replay.frames {
            if ending.is_some() {
                break;
            }
            metrics::counter!(names::MESSAGES_OUT, "kind" => "event").increment(1);
            if !self.write(Outbound::Text(frame)).await {
                ending = Some(self.ending_after_failed_write());
            }
        }
        self.session
            .handle
            .end_recovery(&replay.room, replay.position.as_ref());
        ending
    }

    /// Runs one request; `Ok` carries extra reply fields.
    async fn dispatch(&mut self, request: Request, now: Instant) -> Result<Answer, WireError> {
        let kind = match &request {
            Request::Join { .. } => "join",
            Request::History { .. } => "history",
            Request::Leave { .. } => "leave",
            Request::Heartbeat => "heartbeat",
            Request::Publish { .. } => "publish",
            Request::Presence { .. } => "presence",
            Request::Refresh { .. } => "refresh",
        };
        metrics::counter!(names::MESSAGES_IN, "kind" => kind).increment(1);
        let started = Instant::now();
        let span = tracing::debug_span!("request", op = kind);
        let answer =
            tracing::Instrument::instrument(self.run_request(request, now), span.clone()).await;
        let elapsed = started.elapsed();
        metrics::histogram!(names::REQUEST_SECONDS, "op" => kind).record(elapsed.as_secs_f64());
        span.in_scope(|| {
            tracing::debug!(
                elapsed_us = elapsed.as_micros() as u64,
                error = answer.as_ref().err().map(|error| error.code.as_str()),
                "request answered"
            )
        });
        answer
    }

    /// The work of one request (see [`Connection::dispatch`]).
    async fn run_request(&mut self, request: Request, now: Instant) -> Result<Answer, WireError> {
        let node = self.node.clone();
        match request {
            Request::Join { room, since } => {
                let joined = node.join(&mut self.session, &room, since.as_ref()).await?;
                Ok(Answer::joined(joined, since.is_some()))
            }
            Request::History { room, limit } => {
                let (room, position, events) = node.history(&self.session, &room, limit).await?;
                Ok(Answer::fields(json!({
                    "room": room.as_str(),
                    "offset": position.offset,
                    "epoch": position.epoch.as_ref(),
                    "events": events.iter().map(Frame::to_json).collect::<Vec<_>>(),
                })))
            }
            Request::Leave { room } => {
                let room = node.leave(&mut self.session, &room).await?;
                Ok(Answer::fields(json!({ "room": room.as_str() })))
            }
            Request::Heartbeat => {
                self.heartbeat_since_keepalive = true;
                self.last_heartbeat = now;
                Ok(Answer::default())
            }
            Request::Publish { room, event, data } => {
                let delivery = node
                    .publish_from_client(&self.session, &room, &event, &data)
                    .await?;
                Ok(Answer::fields(delivery.reply_fields()))
            }
            Request::Presence { room } => {
                let (room, members) = node.room_presence(&self.session, &room).await?;
                Ok(Answer::fields(
                    json!({ "room": room.as_str(), "members": members }),
                ))
            }
            Request::Refresh { token } => self.refresh(&token).await.map(Answer::fields),
        }
    }

    /// `refresh`: a valid token for the same user moves the expiry (and room grants) forward.
    /// Rooms its `rooms` claim no longer grants are left (members see the leave); the reply
    /// names them in `left`.
    async fn refresh(&mut self, token: &str) -> Result<serde_json::Value, WireError> {
        let identity = self
            .node
            .verify_token(token)
            .await
            .map_err(|error| WireError::new(ErrorCode::InvalidToken, error.to_string()))?;
        if identity.user_id != self.session.identity.user_id {
            return Err(WireError::new(
                ErrorCode::SubjectMismatch,
                "the new token is for another user",
            ));
        }
        self.token_deadline =
            token_deadline(identity.expires_at, self.node.settings().auth.leeway_secs);
        let expires_at = identity.expires_at;
        self.session.identity = identity;
        let node = self.node.clone();
        let left = node
            .leave_rooms_no_longer_granted(&mut self.session)
            .await?;
        let left: Vec<&str> = left.iter().map(RoomId::as_str).collect();
        Ok(json!({ "expires_at": expires_at, "left": left }))
    }

    /// Leaves the rooms a moderator removed this socket from (members see the leave), and tells
    /// the client with a `room.removed` push per room.
    async fn leave_evicted_rooms(&mut self, handle: &SocketHandle) -> Option<Ending> {
        for room in handle.take_evictions() {
            let node = self.node.clone();
            if !node.evict(&mut self.session, &room).await {
                continue;
            }
            let data = serde_json::value::RawValue::from_string(
                json!({ "reason": "removed_by_moderator" }).to_string(),
            )
            .expect("a JSON object");
            let push = Frame::event(&crate::protocol::EventPush::new(
                "room.removed",
                Some(room.as_str()),
                None,
                &data,
                crate::protocol::unix_now_millis(),
            ));
            if let Some(ending) = self.reply(push).await {
                return Some(ending);
            }
        }
        None
    }

    /// Sends the Close frame that answers the client's (queued by the transport when it read
    /// the client's), bounded like every close step: a client that stops reading cannot hold
    /// the connection open.
    async fn answer_client_close(&mut self) {
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, self.socket.flush()).await;
    }

    /// Sends the close frame and waits briefly for the client's close reply.
    async fn close(&mut self, code: CloseCode) {
        tracing::debug!(code = code.code(), reason = code.reason(), "closing socket");
        // Not `write`: a close may already be requested, and this write must still be tried.
        let sent = tokio::time::timeout(
            CLOSE_HANDSHAKE_TIMEOUT,
            self.socket.send(Outbound::Close(code)),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
            while let Some(inbound) = self.socket.next().await {
                if matches!(inbound, Inbound::Close | Inbound::Failed(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// What a keepalive check does: ping now or not, and when the next check is due.
#[derive(Debug, PartialEq, Eq)]
struct KeepalivePlan {
    ping: bool,
    next_check: Instant,
}

/// When a keepalive check comes: the interval and ttl it works with, and what the socket did.
struct KeepaliveCheck {
    now: Instant,
    /// Whether a heartbeat (op or ping) came since the previous check.
    heartbeat_since_check: bool,
    /// The last heartbeat, ping or pong heard.
    last_heartbeat: Instant,
    interval: Duration,
    ttl: Duration,
}

/// Plans a keepalive check. A client that sent a heartbeat (or a ping) since the previous check
/// is alive: it is not pinged, and its next check comes one interval after its last heartbeat
/// plus some slack, by which time a client heartbeating at the interval has sent the next one,
/// so it is never pinged. A quiet client (a browser, which answers pings but sends none) is
/// pinged every interval.
///
/// The slack is a quarter interval, and at most half of `ttl - interval`: a client that stops
/// heartbeating is pinged at least `(ttl - interval) / 2` before the idle limit (`ttl`) would
/// close it, which leaves that margin for the pong.
fn plan_keepalive(check: KeepaliveCheck) -> KeepalivePlan {
    if !check.heartbeat_since_check {
        return KeepalivePlan {
            ping: true,
            next_check: check.now + check.interval,
        };
    }
    let slack = (check.interval / 4).min(check.ttl.saturating_sub(check.interval) / 2);
    KeepalivePlan {
        ping: false,
        next_check: check.last_heartbeat + check.interval + slack,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_at(now: Instant, heartbeat_since_check: bool, refreshed: Instant) -> KeepaliveCheck {
        KeepaliveCheck {
            now,
            heartbeat_since_check,
            last_heartbeat: refreshed,
            interval: Duration::from_secs(20),
            ttl: Duration::from_secs(60),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_pings_quiet_clients_every_interval() {
        let now = Instant::now();
        let plan = plan_keepalive(check_at(now, false, now - Duration::from_secs(20)));
        assert_eq!(
            plan,
            KeepalivePlan {
                ping: true,
                next_check: now + Duration::from_secs(20)
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_spares_a_heartbeating_client_until_a_slack_after_its_next_heartbeat_is_due()
    {
        let now = Instant::now();
        let heard_at = now - Duration::from_secs(19);
        let plan = plan_keepalive(check_at(now, true, heard_at));
        assert_eq!(
            plan,
            KeepalivePlan {
                ping: false,
                next_check: heard_at + Duration::from_secs(25)
            },
            "a quarter interval of slack"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_pings_a_client_that_stopped_heartbeating_before_the_idle_limit() {
        let refreshed = Instant::now();
        for (interval_secs, ttl_secs) in [(20, 60), (20, 30), (4, 5), (1, 2), (59, 60)] {
            let (interval, ttl) = (
                Duration::from_secs(interval_secs),
                Duration::from_secs(ttl_secs),
            );
            // The last heartbeat was at `refreshed`; the check comes one interval later.
            let plan = plan_keepalive(KeepaliveCheck {
                now: refreshed + interval,
                heartbeat_since_check: true,
                last_heartbeat: refreshed,
                interval,
                ttl,
            });
            let margin = refreshed + ttl - plan.next_check;
            assert!(
                margin >= (ttl - interval) / 2 && margin > Duration::ZERO,
                "interval {interval_secs} s, ttl {ttl_secs} s: pinged {margin:?} before the ttl"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn budget_allows_a_burst_then_the_sustained_rate() {
        let start = Instant::now();
        let mut budget = RequestBudget::new(10, 5, start);
        for _ in 0..5 {
            assert!(budget.try_take(start));
        }
        assert!(!budget.try_take(start), "burst exhausted");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(
            budget.try_take(Instant::now()),
            "one token per 100 ms at 10/s"
        );
        assert!(!budget.try_take(Instant::now()));
    }
}
