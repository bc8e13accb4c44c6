//! The client wire protocol as plain types: requests, replies, pushes, error and close codes.
//!
//! Nothing here knows about WebSockets or HTTP; `transport` moves these bytes. Every reply and
//! push is encoded here, once, into [`Frame`] bytes that are shared by all recipients.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Where a client is in a room's history: the last offset it has, in the epoch it knows.
/// Offset 0 means "before the first event" (the room had none yet). See `stores::history`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub offset: u64,
    pub epoch: Arc<str>,
}

/// How far into a push `Frame::accepted_at_ms` looks for `ts`: past the type, the event name
/// (64), the room id (128) and the sender (256) at their longest.
const ACCEPTED_AT_SEARCH_BYTES: usize = 600;

/// The longest epoch a client may send back (the server's are 16 hex digits).
pub const MAX_EPOCH_CHARS: usize = 64;

/// Stable error codes: the `error.code` of replies and HTTP error bodies. Never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Handshake or `refresh`: missing, malformed, expired or wrongly signed token.
    InvalidToken,
    /// Handshake: the node holds `server.max_connections` sockets.
    NodeFull,
    /// Handshake, `/graphql`, `/api`: the request's `Origin` is not in `server.allowed_origins`.
    OriginForbidden,
    /// Handshake: the user or the client address holds its share of this node's connections
    /// (`limits.max_connections_per_user`, `limits.max_connections_per_address`).
    TooManyConnections,
    /// HTTP API: wrong or missing `X-API-Key`.
    Unauthorized,
    /// HTTP API: `api.key` is not configured.
    ApiDisabled,
    /// The frame is not a JSON object.
    MalformedFrame,
    /// The frame exceeds `limits.max_frame_bytes`.
    FrameTooLarge,
    /// HTTP API: the request body exceeds `api.max_body_bytes`.
    PayloadTooLarge,
    /// `op` names no operation.
    UnknownOp,
    /// A field is missing or has the wrong type; the message names it.
    InvalidRequest,
    /// The room id is not `<type>:<name>`.
    InvalidRoomId,
    /// The room id's type is not configured.
    UnknownRoomType,
    /// The room type has `join = "claims"` and the token's `rooms` claim does not grant it.
    RoomForbidden,
    /// The room holds `capacity` users.
    RoomFull,
    /// The connection is already in `limits.max_rooms_per_connection` rooms.
    TooManyRooms,
    /// The operation needs the socket to be a member of the room.
    NotInRoom,
    /// The room type does not allow clients to publish.
    PublishForbidden,
    /// The room type has `presence = false`.
    PresenceDisabled,
    /// `history`: the room type keeps no history (`history_size = 0`).
    HistoryDisabled,
    /// The event name is not 1-64 characters of `[A-Za-z0-9._:-]` or uses a reserved prefix.
    InvalidEvent,
    /// `refresh` carried a valid token for another user.
    SubjectMismatch,
    /// Too many requests on this connection; slow down.
    RateLimited,
    /// A plugin refused the event; the message is the plugin's.
    PluginRejected,
    /// A plugin failed on the event and the room type fails closed.
    PluginFailed,
    /// A backend the operation needs is unreachable; retry later.
    Unavailable,
    /// A bug on our side; details are in the server log, never in the reply.
    InternalError,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::NodeFull => "node_full",
            ErrorCode::OriginForbidden => "origin_forbidden",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::ApiDisabled => "api_disabled",
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidRoomId => "invalid_room_id",
            ErrorCode::UnknownRoomType => "unknown_room_type",
            ErrorCode::RoomForbidden => "room_forbidden",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::NotInRoom => "not_in_room",
            ErrorCode::PublishForbidden => "publish_forbidden",
            ErrorCode::PresenceDisabled => "presence_disabled",
            ErrorCode::HistoryDisabled => "history_disabled",
            ErrorCode::InvalidEvent => "invalid_event",
            ErrorCode::SubjectMismatch => "subject_mismatch",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::PluginRejected => "plugin_rejected",
            ErrorCode::PluginFailed => "plugin_failed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::InternalError => "internal_error",
        }
    }
}

impl ErrorCode {
    /// Every code, for documentation and for the client SDK's conformance test.
    pub const ALL: [ErrorCode; 27] = [
        ErrorCode::InvalidToken,
        ErrorCode::NodeFull,
        ErrorCode::OriginForbidden,
        ErrorCode::TooManyConnections,
        ErrorCode::Unauthorized,
        ErrorCode::ApiDisabled,
        ErrorCode::MalformedFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnknownOp,
        ErrorCode::InvalidRequest,
        ErrorCode::InvalidRoomId,
        ErrorCode::UnknownRoomType,
        ErrorCode::RoomForbidden,
        ErrorCode::RoomFull,
        ErrorCode::TooManyRooms,
        ErrorCode::NotInRoom,
        ErrorCode::PublishForbidden,
        ErrorCode::PresenceDisabled,
        ErrorCode::HistoryDisabled,
        ErrorCode::InvalidEvent,
        ErrorCode::SubjectMismatch,
        ErrorCode::RateLimited,
        ErrorCode::PluginRejected,
        ErrorCode::PluginFailed,
        ErrorCode::Unavailable,
        ErrorCode::InternalError,
    ];
}

/// An error with its wire code; what every module's error maps to once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
        }
    }
}

/// WebSocket close codes the server sends. 4000-4499: reconnect (with backoff);
/// 4500-4999: do not reconnect without a change on the client side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: normal close, answering the client's own close.
    Normal,
    /// 1002: the client broke RFC 6455 framing (an unmasked frame, reserved bits or opcodes, a
    /// continuation with nothing to continue, a fragmented or oversized control frame, a
    /// malformed close frame). Fix the client.
    ProtocolError,
    /// 1007: a text frame that is not valid UTF-8 (RFC 6455 section 8.1). Fix the client.
    InvalidPayload,
    /// 1009: a frame beyond the hard size limit (4 x `limits.max_frame_bytes`). Fix the client.
    MessageTooBig,
    /// 1012: the node is restarting or shutting down; reconnect (another node will take you).
    Restart,
    /// 4001: the token expired and no `refresh` arrived; reconnect with a fresh token.
    TokenExpired,
    /// 4002: the socket did not read its events fast enough (outbox full); reconnect.
    SlowConsumer,
    /// 4003: too many requests after `rate_limited` replies; reconnect after a backoff.
    RateLimited,
    /// 4004: nothing (no frame, ping or heartbeat) arrived for `presence.ttl_secs`; reconnect.
    HeartbeatTimeout,
    /// 4005: a backend this connection needs (broker, presence) is unreachable; reconnect later.
    BackendUnavailable,
    /// 4006: the node holds `server.max_connections` sockets (the `node_full` refusal, sent as
    /// a close only to handshakes that ask for `refusal=close`); reconnect after a backoff.
    NodeFull,
    /// 4007: the user or the address holds its share of the node's connections
    /// (`too_many_connections`, as a close only for `refusal=close`); reconnect after a backoff.
    TooManyConnections,
    /// 4008: an operator disconnected the user (server API, `reconnect: true`); reconnect after
    /// a backoff.
    DisconnectedByServer,
    /// 4500: a binary frame arrived; this protocol is JSON text frames only. Fix the client.
    UnsupportedData,
    /// 4501: the handshake's token was refused (`invalid_token`, sent as a close only to
    /// handshakes that ask for `refusal=close`). Reconnecting with the same token cannot work.
    InvalidToken,
    /// 4502: the handshake's `Origin` is not in `server.allowed_origins` (`origin_forbidden`,
    /// as a close only for `refusal=close`).
    OriginForbidden,
    /// 4503: an operator disconnected the user and asks the client not to come back
    /// (server API, `reconnect: false`).
    AccessRevoked,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::ProtocolError => 1002,
            CloseCode::InvalidPayload => 1007,
            CloseCode::MessageTooBig => 1009,
            CloseCode::Restart => 1012,
            CloseCode::TokenExpired => 4001,
            CloseCode::SlowConsumer => 4002,
            CloseCode::RateLimited => 4003,
            CloseCode::HeartbeatTimeout => 4004,
            CloseCode::BackendUnavailable => 4005,
            CloseCode::NodeFull => 4006,
            CloseCode::TooManyConnections => 4007,
            CloseCode::DisconnectedByServer => 4008,
            CloseCode::UnsupportedData => 4500,
            CloseCode::InvalidToken => 4501,
            CloseCode::OriginForbidden => 4502,
            CloseCode::AccessRevoked => 4503,
        }
    }

    /// Every code, for lookups and documentation.
    pub const ALL: [CloseCode; 17] = [
        CloseCode::Normal,
        CloseCode::ProtocolError,
        CloseCode::InvalidPayload,
        CloseCode::MessageTooBig,
        CloseCode::Restart,
        CloseCode::TokenExpired,
        CloseCode::SlowConsumer,
        CloseCode::RateLimited,
        CloseCode::HeartbeatTimeout,
        CloseCode::BackendUnavailable,
        CloseCode::NodeFull,
        CloseCode::TooManyConnections,
        CloseCode::DisconnectedByServer,
        CloseCode::UnsupportedData,
        CloseCode::InvalidToken,
        CloseCode::OriginForbidden,
        CloseCode::AccessRevoked,
    ];

    pub fn from_code(code: u16) -> Option<CloseCode> {
        CloseCode::ALL
            .into_iter()
            .find(|close| close.code() == code)
    }

    /// The close reason text (also the `reason` of `socket.disconnect`).
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::InvalidPayload => "invalid_payload",
            CloseCode::MessageTooBig => "message_too_big",
            CloseCode::Restart => "server_restart",
            CloseCode::TokenExpired => "token_expired",
            CloseCode::SlowConsumer => "slow_consumer",
            CloseCode::RateLimited => "rate_limited",
            CloseCode::HeartbeatTimeout => "heartbeat_timeout",
            CloseCode::BackendUnavailable => "backend_unavailable",
            CloseCode::NodeFull => "node_full",
            CloseCode::TooManyConnections => "too_many_connections",
            CloseCode::DisconnectedByServer => "disconnected_by_server",
            CloseCode::UnsupportedData => "unsupported_data",
            CloseCode::InvalidToken => "invalid_token",
            CloseCode::OriginForbidden => "origin_forbidden",
            CloseCode::AccessRevoked => "access_revoked",
        }
    }

    /// The close that stands for a handshake refusal with `code`, for clients that ask for
    /// refusals as closes (`refusal=close`): browsers never see the HTTP status of a refused
    /// upgrade, only 1006.
    pub fn for_refusal(code: ErrorCode) -> CloseCode {
        match code {
            ErrorCode::InvalidToken => CloseCode::InvalidToken,
            ErrorCode::NodeFull => CloseCode::NodeFull,
            ErrorCode::TooManyConnections => CloseCode::TooManyConnections,
            ErrorCode::OriginForbidden => CloseCode::OriginForbidden,
            // Only a draining node refuses a handshake as unavailable: like its sockets, the
            // client moves to another node.
            ErrorCode::Unavailable => CloseCode::Restart,
            // A browser's handshake is always a well-formed upgrade; anything else it could
            // meet is a protocol problem.
            _ => CloseCode::ProtocolError,
        }
    }
}

/// A request id chosen by the client, echoed in the reply: a number or a string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    Number(u64),
    Text(String),
}

/// A parsed client request: the closed set of operations.
#[derive(Debug)]
pub enum Request {
    Join {
        room: String,
        /// The client's last position in the room: recover what it missed since.
        since: Option<Position>,
    },
    Leave {
        room: String,
    },
    Heartbeat,
    Publish {
        room: String,
        event: String,
        data: Box<RawValue>,
    },
    Presence {
        room: String,
    },
    /// The room's last `limit` events (at most the room type's `history_size`).
    History {
        room: String,
        limit: Option<usize>,
    },
    Refresh {
        token: String,
    },
}

/// Every field any request may carry; [`parse_request`] turns it into a [`Request`].
/// Parsing into one flat struct first keeps the `id` even when the rest is wrong.
#[derive(Deserialize)]
struct RawRequest<'a> {
    id: Option<RequestId>,
    #[serde(borrow)]
    op: Option<&'a str>,
    room: Option<String>,
    event: Option<String>,
    data: Option<Box<RawValue>>,
    token: Option<String>,
    since: Option<RawPosition>,
    limit: Option<usize>,
}

/// `since` as sent: `{"offset": <u64>, "epoch": "<string>"}`.
#[derive(Deserialize)]
struct RawPosition {
    offset: u64,
    epoch: String,
}

/// A request that could not be understood, with whatever id could be recovered.
#[derive(Debug)]
pub struct RejectedRequest {
    pub id: Option<RequestId>,
    pub error: WireError,
}

/// Parses one text frame. The `id` is returned with the error whenever it could be read.
pub fn parse_request(text: &str) -> Result<(Option<RequestId>, Request), RejectedRequest> {
    // serde would also read a struct from a JSON array (its fields by position), so `["x"]` would
    // carry the id "x": only an object is a request.
    if !text.trim_start().starts_with('{') {
        let is_json = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
        return Err(RejectedRequest {
            id: None,
            error: if is_json {
                WireError::new(ErrorCode::InvalidRequest, "a request is a JSON object")
            } else {
                WireError::new(ErrorCode::MalformedFrame, "frame is not a JSON object")
            },
        });
    }
    let raw: RawRequest = serde_json::from_str(text).map_err(|error| RejectedRequest {
        id: recover_id(text),
        error: if error.is_data() {
            WireError::new(ErrorCode::InvalidRequest, format!("invalid field: {error}"))
        } else {
            WireError::new(ErrorCode::MalformedFrame, "frame is not a JSON object")
        },
    })?;
    let id = raw.id.clone();
    let reject = |code, message: String| RejectedRequest {
        id: raw.id.clone(),
        error: WireError::new(code, message),
    };
    let missing = |field: &str| {
        reject(
            ErrorCode::InvalidRequest,
            format!("missing field `{field}`"),
        )
    };
    let request = match raw.op {
        None => return Err(missing("op")),
        Some("join") => Request::Join {
            room: raw.room.clone().ok_or_else(|| missing("room"))?,
            since: match raw.since {
                None => None,
                Some(since) if since.epoch.chars().count() > MAX_EPOCH_CHARS => {
                    return Err(reject(
                        ErrorCode::InvalidRequest,
                        format!("`since.epoch` is longer than {MAX_EPOCH_CHARS} characters"),
                    ));
                }
                Some(since) => Some(Position {
                    offset: since.offset,
                    epoch: Arc::from(since.epoch),
                }),
            },
        },
        Some("history") => Request::History {
            room: raw.room.clone().ok_or_else(|| missing("room"))?,
            limit: raw.limit,
        },
        Some("leave") => Request::Leave {
            room: raw.room.clone().ok_or_else(|| missing("room"))?,
        },
        Some("heartbeat") => Request::Heartbeat,
        Some("presence") => Request::Presence {
            room: raw.room.clone().ok_or_else(|| missing("room"))?,
        },
        Some("refresh") => Request::Refresh {
            token: raw.token.clone().ok_or_else(|| missing("token"))?,
        },
        Some("publish") => {
            let room = raw.room.clone().ok_or_else(|| missing("room"))?;
            let event = raw.event.clone().ok_or_else(|| missing("event"))?;
            let data = raw.data.ok_or_else(|| missing("data"))?;
            Request::Publish { room, event, data }
        }
        Some(other) => {
            let shown: String = other.chars().take(32).collect();
            return Err(reject(
                ErrorCode::UnknownOp,
                format!("unknown op `{shown}`"),
            ));
        }
    };
    Ok((id, request))
}

/// Best effort: read just the `id` of a frame whose other fields failed to parse.
fn recover_id(text: &str) -> Option<RequestId> {
    #[derive(Deserialize)]
    struct OnlyId {
        id: Option<RequestId>,
    }
    serde_json::from_str::<OnlyId>(text)
        .ok()
        .and_then(|only| only.id)
}

/// Event names: 1-64 characters of `[A-Za-z0-9._:-]`.
pub fn is_valid_event_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-' | b':'))
}

/// Event names only the server emits; clients and the API may not publish them.
pub fn is_reserved_event_name(name: &str) -> bool {
    name.starts_with("room.") || name.starts_with("socket.") || name.starts_with("user.")
}

/// The event families of the spec that services publish (`notification.new`,
/// `progress.updated`, `tournament.start`, `match.update`): a client publishing them into a chat
/// room could fake a score or a notification that apps trust, so clients may not.
pub const SERVICE_EVENT_PREFIXES: [&str; 4] =
    ["notification.", "progress.", "tournament.", "match."];

/// Whether only services (NATS, the HTTP API) may publish this event.
pub fn is_service_event_name(name: &str) -> bool {
    SERVICE_EVENT_PREFIXES
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// An encoded server-to-client text frame. Cloning shares the bytes: encode once, send to many.
///
/// Always valid UTF-8: frames are made by serde_json here or checked once by
/// [`Frame::from_encoded`], so the transport sends one as text without checking it again for
/// every recipient (a room of 10,000 would otherwise check the same bytes 10,000 times).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame(Bytes);

/// Bytes that are not UTF-8 text cannot be a frame.
#[derive(Debug, thiserror::Error)]
#[error("an encoded frame must be UTF-8 text")]
pub struct NotText;

impl Frame {
    fn from_json(value: &impl Serialize) -> Frame {
        // Serializing these plain structs cannot fail: no maps with non-string keys, no I/O.
        Frame(Bytes::from(
            serde_json::to_vec(value).expect("protocol frames always serialize"),
        ))
    }

    /// Wraps bytes that are already one encoded frame (for example from the broker), after
    /// checking that they are text.
    pub fn from_encoded(bytes: Bytes) -> Result<Frame, NotText> {
        std::str::from_utf8(&bytes).map_err(|_| NotText)?;
        Ok(Frame(bytes))
    }

    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first frame on every socket.
    pub fn connected(hello: &Connected<'_>) -> Frame {
        Frame::from_json(hello)
    }

    /// `{"id":..,"ok":true, ..extra}`; `extra` must be a JSON object or absent.
    pub fn reply_ok(id: Option<&RequestId>, extra: Option<&serde_json::Value>) -> Frame {
        #[derive(Serialize)]
        struct Ok<'a> {
            id: Option<&'a RequestId>,
            ok: bool,
            #[serde(flatten, skip_serializing_if = "Option::is_none")]
            extra: Option<&'a serde_json::Value>,
        }
        Frame::from_json(&Ok {
            id,
            ok: true,
            extra,
        })
    }

    /// `{"id":..,"ok":false,"error":{"code":..,"message":..}}`
    pub fn reply_error(id: Option<&RequestId>, error: &WireError) -> Frame {
        #[derive(Serialize)]
        struct Failed<'a> {
            id: Option<&'a RequestId>,
            ok: bool,
            error: ErrorBody<'a>,
        }
        Frame::from_json(&Failed {
            id,
            ok: false,
            error: ErrorBody::from(error),
        })
    }

    /// `{"type":"event","event":..,"room"?:..,"from"?:..,"data":..,"ts":..,"offset"?:..,
    /// "epoch"?:..}`
    pub fn event(push: &EventPush<'_>) -> Frame {
        Frame::from_json(push)
    }

    /// When the server accepted the event this push carries (its `ts`, Unix milliseconds), read
    /// from the frame's first bytes where `EventPush` puts it; `None` for other frames.
    pub fn accepted_at_ms(&self) -> Option<u64> {
        let head = &self.bytes()[..self.len().min(ACCEPTED_AT_SEARCH_BYTES)];
        let marker = b",\"ts\":";
        let start = head
            .windows(marker.len())
            .position(|window| window == marker)?
            + marker.len();
        let digits = head[start..]
            .iter()
            .take_while(|byte| byte.is_ascii_digit())
            .count();
        std::str::from_utf8(&head[start..start + digits])
            .ok()?
            .parse()
            .ok()
    }

    /// The frame as a JSON value (frames are JSON objects by construction), for embedding
    /// pushes in a reply (`history`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::from_slice(self.bytes()).unwrap_or(serde_json::Value::Null)
    }

    /// The history position an event push carries (`offset` and `epoch`), if any. Only the
    /// top-level fields are read.
    pub fn history_position(&self) -> Option<Position> {
        #[derive(Deserialize)]
        struct Positioned<'a> {
            offset: Option<u64>,
            #[serde(borrow)]
            epoch: Option<&'a str>,
        }
        let positioned: Positioned = serde_json::from_slice(self.bytes()).ok()?;
        Some(Position {
            offset: positioned.offset?,
            epoch: Arc::from(positioned.epoch?),
        })
    }
}

/// A command every node acts on, sent over the broker's control topic (never to clients).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum ControlCommand {
    /// Close every socket of `user` with `close` (a close code).
    DisconnectUser { user: String, close: u16 },
    /// Remove every socket of `user` from `room`, as a leave would (members see the leave).
    RemoveFromRoom { user: String, room: String },
}

impl ControlCommand {
    /// The command as the frame the broker carries.
    pub fn frame(&self) -> Frame {
        Frame::from_json(self)
    }

    /// Reads a frame from the control topic; `None` for anything else.
    pub fn from_frame(frame: &Frame) -> Option<ControlCommand> {
        serde_json::from_slice(frame.bytes()).ok()
    }
}

/// `{"code":..,"message":..}`, the body of every error on the wire (socket and HTTP).
#[derive(Serialize)]
pub struct ErrorBody<'a> {
    pub code: &'static str,
    pub message: &'a str,
}

impl<'a> From<&'a WireError> for ErrorBody<'a> {
    fn from(error: &'a WireError) -> Self {
        ErrorBody {
            code: error.code.as_str(),
            message: &error.message,
        }
    }
}

/// The `connected` frame.
#[derive(Serialize)]
pub struct Connected<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub socket_id: &'a str,
    pub user_id: &'a str,
    pub node: &'a str,
    pub heartbeat_interval_ms: u64,
    /// Token expiry, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// An event pushed to clients. `room` is absent for user-targeted pushes; `from` names the
/// sending user for client publishes.
#[derive(Serialize)]
pub struct EventPush<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<&'a str>,
    /// Milliseconds since the Unix epoch when the server accepted the event. Before `data`, so
    /// that a receiving node finds it in the frame's first bytes (`Frame::accepted_at_ms`).
    pub ts: u64,
    /// The event's position in the room's history (rooms with history only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<&'a str>,
    pub data: &'a RawValue,
}

impl<'a> EventPush<'a> {
    /// A push without a history position (users' pushes, announcements, rooms without history).
    pub fn new(
        event: &'a str,
        room: Option<&'a str>,
        from: Option<&'a str>,
        data: &'a RawValue,
        ts: u64,
    ) -> Self {
        EventPush {
            kind: "event",
            event,
            room,
            from,
            data,
            ts,
            offset: None,
            epoch: None,
        }
    }

    /// The same push at `position` in its room's history (none: as it was).
    pub fn at(self, position: Option<&'a Position>) -> Self {
        EventPush {
            offset: position.map(|position| position.offset),
            epoch: position.map(|position| position.epoch.as_ref()),
            ..self
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_frame_must_be_text() {
        let text = Bytes::from_static("{\"t\":\"héllo\"}".as_bytes());
        assert_eq!(Frame::from_encoded(text.clone()).unwrap().bytes(), &text);
        assert!(Frame::from_encoded(Bytes::from_static(&[b'{', 0xff, b'}'])).is_err());
    }

    #[test]
    fn parses_each_op() {
        let (id, request) = parse_request(r#"{"id":1,"op":"join","room":"chat:a"}"#).unwrap();
        assert_eq!(id, Some(RequestId::Number(1)));
        assert!(matches!(request, Request::Join { room, since: None } if room == "chat:a"));
        let (_, request) = parse_request(
            r#"{"id":"x","op":"publish","room":"chat:a","event":"msg","data":{"t":1}}"#,
        )
        .unwrap();
        assert!(matches!(request, Request::Publish { data, .. } if data.get() == r#"{"t":1}"#));
        assert!(matches!(
            parse_request(r#"{"op":"heartbeat"}"#).unwrap().1,
            Request::Heartbeat
        ));
    }

    #[test]
    fn errors_keep_the_id_and_name_the_problem() {
        let rejected = parse_request(r#"{"id":7,"op":"join"}"#).unwrap_err();
        assert_eq!(rejected.id, Some(RequestId::Number(7)));
        assert_eq!(rejected.error.code, ErrorCode::InvalidRequest);
        assert!(rejected.error.message.contains("room"));

        let rejected = parse_request(r#"{"id":8,"op":"fly"}"#).unwrap_err();
        assert_eq!(rejected.error.code, ErrorCode::UnknownOp);

        let rejected = parse_request(r#"{"id":9,"op":"join","room":5}"#).unwrap_err();
        assert_eq!(rejected.id, Some(RequestId::Number(9)));
        assert_eq!(rejected.error.code, ErrorCode::InvalidRequest);

        let rejected = parse_request("not json").unwrap_err();
        assert_eq!(rejected.id, None);
        assert_eq!(rejected.error.code, ErrorCode::MalformedFrame);

        // Found by the decoder property test: an array is read by position, not as a request.
        let rejected = parse_request(r#"["x", "join"]"#).unwrap_err();
        assert_eq!(rejected.id, None, "no id out of an array");
        assert_eq!(rejected.error.code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn frames_encode_as_documented() {
        let error = WireError::new(ErrorCode::RoomFull, "full");
        let frame = Frame::reply_error(Some(&RequestId::Number(3)), &error);
        assert_eq!(
            frame.bytes().as_ref(),
            br#"{"id":3,"ok":false,"error":{"code":"room_full","message":"full"}}"#
        );
        let data = RawValue::from_string(r#"{"a":1}"#.to_owned()).unwrap();
        let frame = Frame::event(&EventPush {
            kind: "event",
            event: "match.update",
            room: Some("competition:1"),
            from: None,
            data: &data,
            ts: 5,
            offset: None,
            epoch: None,
        });
        assert_eq!(
            frame.bytes().as_ref(),
            br#"{"type":"event","event":"match.update","room":"competition:1","ts":5,"data":{"a":1}}"#
        );
        assert_eq!(
            frame.accepted_at_ms(),
            Some(5),
            "ts is found in the first bytes"
        );
        let data = RawValue::from_string(r#"{"note":",\"ts\":1"}"#.to_owned()).unwrap();
        let positioned = Frame::event(&EventPush {
            kind: "event",
            event: "chat.message",
            room: Some("chat:a"),
            from: Some("u1"),
            data: &data,
            ts: 1_795_643_627_123,
            offset: Some(7),
            epoch: Some("e1"),
        });
        assert_eq!(positioned.accepted_at_ms(), Some(1_795_643_627_123));
        let position = positioned.history_position().unwrap();
        assert_eq!((position.offset, position.epoch.as_ref()), (7, "e1"));
        assert_eq!(Frame::reply_ok(None, None).accepted_at_ms(), None);
    }

    /// The section of `source` from `start` to the first `end` after it.
    fn section<'a>(source: &'a str, start: &str, end: &str) -> &'a str {
        let from = source
            .find(start)
            .unwrap_or_else(|| panic!("`{start}` not found"));
        let rest = &source[from + start.len()..];
        &rest[..rest.find(end).expect("section end")]
    }

    /// The TypeScript SDK's code lists must not drift from the server's: every error code and
    /// every close code with its reason, nothing more.
    #[test]
    fn the_client_sdk_lists_exactly_the_servers_codes() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk-client/src/protocol.ts");
        let sdk = std::fs::read_to_string(path).expect("sdk-client/src/protocol.ts");

        let sdk_errors: std::collections::BTreeSet<&str> =
            section(&sdk, "export const ERROR_CODES = [", "]")
                .split(',')
                .map(|entry| entry.trim().trim_matches('"'))
                .filter(|entry| !entry.is_empty())
                .collect();
        let server_errors: std::collections::BTreeSet<&str> =
            ErrorCode::ALL.iter().map(|code| code.as_str()).collect();
        assert_eq!(sdk_errors, server_errors, "ERROR_CODES in {path}");

        let sdk_closes: std::collections::BTreeSet<(String, u16)> =
            section(&sdk, "export const CLOSE_CODES = {", "}")
                .lines()
                .filter_map(|line| line.trim().trim_end_matches(',').split_once(':'))
                .map(|(reason, code)| (reason.trim().to_owned(), code.trim().parse().unwrap()))
                .collect();
        let server_closes: std::collections::BTreeSet<(String, u16)> = CloseCode::ALL
            .iter()
            .map(|close| (close.reason().to_owned(), close.code()))
            .collect();
        assert_eq!(sdk_closes, server_closes, "CLOSE_CODES in {path}");
    }

    #[test]
    fn every_code_is_listed_once() {
        let errors: std::collections::HashSet<_> = ErrorCode::ALL.iter().collect();
        assert_eq!(errors.len(), ErrorCode::ALL.len());
        let closes: std::collections::HashSet<_> =
            CloseCode::ALL.iter().map(|close| close.code()).collect();
        assert_eq!(closes.len(), CloseCode::ALL.len());
    }

    /// Inputs for the decoder property test: valid requests, then each mutated by random byte
    /// edits (flips, insertions, deletions, truncations, splices of JSON tokens).
    fn mutated_request(rng: &mut impl rand::Rng) -> Vec<u8> {
        const SEEDS: [&str; 7] = [
            r#"{"id":1,"op":"join","room":"chat:a"}"#,
            r#"{"id":"x","op":"publish","room":"chat:a","event":"chat.message","data":{"t":[1,2,{"u":null}]}}"#,
            r#"{"op":"heartbeat"}"#,
            r#"{"id":9,"op":"refresh","token":"a.b.c"}"#,
            r#"{"id":18446744073709551615,"op":"presence","room":"lesson:7"}"#,
            r#"{"id":-1,"op":"leave","room":"chat:\u00e9"}"#,
            r#"[{"op":"join"}]"#,
        ];
        const TOKENS: [&[u8]; 12] = [
            b"{", b"}", b"[", b"]", b"\"", b"\\", b":", b",", b"null", b"1e999", b"\\u0000",
            b"\xff",
        ];
        let mut bytes = SEEDS[rng.random_range(0..SEEDS.len())].as_bytes().to_vec();
        for _ in 0..rng.random_range(1..6) {
            let at = rng.random_range(0..=bytes.len());
            match rng.random_range(0..5) {
                0 if at < bytes.len() => bytes[at] ^= 1 << rng.random_range(0..8),
                1 => bytes.insert(at, rng.random()),
                2 if at < bytes.len() => {
                    bytes.remove(at);
                }
                3 => bytes.truncate(at),
                _ => {
                    let token = TOKENS[rng.random_range(0..TOKENS.len())];
                    bytes.splice(at..at, token.iter().copied());
                }
            }
        }
        bytes
    }

    /// Property: whatever bytes a client sends, the decoders never panic; a request is either
    /// parsed or refused with a coded error, and an id is only ever reported when the frame had
    /// one. Runs 20,000 inputs in `cargo test`; `REALTIME_FUZZ_ITERATIONS=5000000` for a long run.
    #[test]
    fn the_request_decoder_never_panics_and_always_answers_with_a_code() {
        use rand::SeedableRng;
        let iterations: u64 = std::env::var("REALTIME_FUZZ_ITERATIONS")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(20_000);
        let seed = rand::random::<u64>();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for _ in 0..iterations {
            let bytes = mutated_request(&mut rng);
            // The transport refuses text that is not UTF-8 (close 1007); the rest reaches here.
            let Ok(text) = std::str::from_utf8(&bytes) else {
                assert!(Frame::from_encoded(Bytes::from(bytes)).is_err());
                continue;
            };
            match std::panic::catch_unwind(|| parse_request(text)) {
                Ok(Ok(_)) => {}
                Ok(Err(rejected)) => {
                    assert!(ErrorCode::ALL.contains(&rejected.error.code));
                    assert!(!rejected.error.message.is_empty());
                    if rejected.id.is_some() {
                        assert!(
                            text.contains("\"id\""),
                            "seed {seed}: an id out of nowhere in {text}"
                        );
                    }
                }
                Err(_) => panic!("seed {seed}: the decoder panicked on {text:?}"),
            }
        }
    }

    #[test]
    fn event_names_are_checked() {
        assert!(is_valid_event_name("match.update"));
        assert!(!is_valid_event_name(""));
        assert!(!is_valid_event_name("has space"));
        assert!(is_reserved_event_name("room.user_joined"));
        assert!(!is_reserved_event_name("chat.message"));
    }
}
