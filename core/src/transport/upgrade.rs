//! The server's one WebSocket upgrade, shared by `/ws` and `/graphql`: it checks the request
//! (RFC 6455 section 4.2.1), answers `101 Switching Protocols` (naming the subprotocol it chose),
//! and turns the upgraded connection into a tungstenite stream configured with the node's frame
//! limits. How a read error ends a socket (1009, 1002, 1007, or a connection simply gone) is
//! decided here too, so both doors close the same way.
//!
//! Not salvo's `WebSocketUpgrade`: that one spawns a task holding the upgrade's state and the
//! session's side by side for the connection's whole life, which every idle connection pays for;
//! here the caller's one task awaits the upgrade and then runs the socket.

use salvo::http::Method;
use salvo::http::header::{SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE};
use salvo::http::headers::{
    Connection, HeaderMapExt, HeaderValue, SecWebsocketAccept, SecWebsocketKey, Upgrade,
};
use salvo::hyper::upgrade::{OnUpgrade, Upgraded};
use salvo::prelude::*;
use salvo::rt::tokio::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Error as TungsteniteError;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::protocol::CloseCode;

/// An upgraded connection, as both doors' loops read and write it.
pub type UpgradedSocket = WebSocketStream<TokioIo<Upgraded>>;

/// Per-socket read buffer, allocated for the socket's whole life. Small on purpose: most sockets
/// are idle, and the usual client requests (join, leave, heartbeat, presence: 20-80 bytes with
/// their 6-byte header) fit in one read; a larger frame (a token refresh, a client publish) still
/// arrives, the buffer growing to the frame's length and read this many bytes per call.
/// tungstenite's default is 128 KiB, and it zero-fills the read space before every read.
const READ_BUFFER_BYTES: usize = 128;
/// Bytes buffered before tungstenite writes through; the loops flush after each batch anyway.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// Hard cap on a socket's unsent bytes; beyond it writes fail and the socket is dropped.
const MAX_WRITE_BUFFER_BYTES: usize = 1024 * 1024;
/// Frames up to this multiple of `limits.max_frame_bytes` are read whole, so that the socket's
/// own protocol can answer them (`frame_too_large` on `/ws`, close 1009 on `/graphql`); bigger
/// ones are cut by the WebSocket layer before they are buffered (close 1009).
const HARD_FRAME_LIMIT_FACTOR: usize = 4;

/// The WebSocket settings of every socket of a node with this `limits.max_frame_bytes`.
pub fn socket_config(max_frame_bytes: usize) -> WebSocketConfig {
    let hard_limit = max_frame_bytes * HARD_FRAME_LIMIT_FACTOR;
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
        .max_message_size(Some(hard_limit))
        .max_frame_size(Some(hard_limit))
}

/// An upgrade answered with 101; the connection itself arrives once the handler has returned.
pub struct AcceptedUpgrade {
    on_upgrade: OnUpgrade,
    config: WebSocketConfig,
}

impl AcceptedUpgrade {
    /// The upgraded socket; `None` when the client went away before the upgrade completed.
    pub async fn into_socket(self: Box<Self>) -> Option<UpgradedSocket> {
        match self.on_upgrade.await {
            Ok(upgraded) => Some(
                WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(self.config),
                )
                .await,
            ),
            Err(error) => {
                tracing::debug!(%error, "websocket upgrade failed");
                None
            }
        }
    }
}

/// Checks that `req` is a WebSocket upgrade, writes the 101 answer (with `protocol` as the
/// chosen subprotocol) and returns the pending upgrade; on a request that cannot be upgraded, the
/// reason, and `res` is left for the caller's refusal. Boxed: the task that awaits the upgrade
/// keeps what it captured for the connection's whole life, and a pointer is all it needs to keep.
pub fn accept(
    req: &mut Request,
    res: &mut Response,
    config: WebSocketConfig,
    protocol: Option<&'static str>,
) -> Result<Box<AcceptedUpgrade>, &'static str> {
    let answer = upgrade_answer(req)?;
    let on_upgrade = req
        .extensions_mut()
        .remove::<OnUpgrade>()
        .ok_or("this connection cannot be upgraded (HTTP/1.1 is needed)")?;
    res.status_code(StatusCode::SWITCHING_PROTOCOLS);
    let headers = res.headers_mut();
    headers.typed_insert(Connection::upgrade());
    headers.typed_insert(Upgrade::websocket());
    headers.typed_insert(answer);
    if let Some(protocol) = protocol {
        headers.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
    }
    Ok(Box::new(AcceptedUpgrade { on_upgrade, config }))
}

/// Checks that the request is a WebSocket upgrade (RFC 6455 section 4.2.1) and returns the
/// `Sec-WebSocket-Accept` answer to its key.
fn upgrade_answer(req: &Request) -> Result<SecWebsocketAccept, &'static str> {
    if req.method() != Method::GET {
        return Err("the WebSocket handshake needs GET");
    }
    let headers = req.headers();
    if !headers
        .typed_get::<Connection>()
        .is_some_and(|connection| connection.contains(UPGRADE))
    {
        return Err("missing `Connection: upgrade`");
    }
    if !headers
        .get(UPGRADE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.eq_ignore_ascii_case("websocket"))
    {
        return Err("missing `Upgrade: websocket`");
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .is_none_or(|value| value.as_bytes() != b"13")
    {
        return Err("`Sec-WebSocket-Version` must be 13");
    }
    let key = headers
        .typed_get::<SecWebsocketKey>()
        .ok_or("missing `Sec-WebSocket-Key`")?;
    Ok(SecWebsocketAccept::from(key))
}

/// How a failed read ends a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFailure {
    /// A frame or message beyond the hard limit: close 1009.
    TooLarge,
    /// The client broke RFC 6455 framing: close 1002.
    ProtocolViolation(String),
    /// A text frame that is not UTF-8 (RFC 6455 section 8.1): close 1007.
    InvalidUtf8,
    /// The connection broke or the peer went away without a Close frame: nothing to answer.
    Gone(String),
}

impl ReadFailure {
    pub fn of(error: TungsteniteError) -> ReadFailure {
        match error {
            TungsteniteError::Capacity(_) => ReadFailure::TooLarge,
            // The peer went away without a Close frame: a broken connection, not a violation.
            TungsteniteError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                ReadFailure::Gone("connection reset without a closing handshake".to_owned())
            }
            TungsteniteError::Protocol(violation) => {
                ReadFailure::ProtocolViolation(violation.to_string())
            }
            TungsteniteError::Utf8(_) => ReadFailure::InvalidUtf8,
            error => ReadFailure::Gone(error.to_string()),
        }
    }

    /// The close frame the server sends, if any.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            ReadFailure::TooLarge => Some(CloseCode::MessageTooBig),
            ReadFailure::ProtocolViolation(_) => Some(CloseCode::ProtocolError),
            ReadFailure::InvalidUtf8 => Some(CloseCode::InvalidPayload),
            ReadFailure::Gone(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::error::CapacityError;

    #[test]
    fn read_errors_close_with_the_codes_rfc_6455_names() {
        let too_big = TungsteniteError::Capacity(CapacityError::MessageTooLong {
            size: 10,
            max_size: 5,
        });
        assert_eq!(
            ReadFailure::of(too_big).close_code(),
            Some(CloseCode::MessageTooBig)
        );
        let unmasked = TungsteniteError::Protocol(ProtocolError::UnmaskedFrameFromClient);
        assert_eq!(
            ReadFailure::of(unmasked).close_code(),
            Some(CloseCode::ProtocolError)
        );
        let reset = TungsteniteError::Protocol(ProtocolError::ResetWithoutClosingHandshake);
        assert_eq!(ReadFailure::of(reset).close_code(), None);
        let broken = TungsteniteError::Io(std::io::ErrorKind::BrokenPipe.into());
        assert_eq!(ReadFailure::of(broken).close_code(), None);
    }
}
