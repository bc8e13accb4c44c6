//! The server side of the browser path: the RFC 6455 close handshake and framing errors, refusals
//! a browser can read (`refusal=close`), and `server.allowed_origins` (Origin checks and CORS).
//!
//! Framing tests speak raw bytes over TCP: a WebSocket library would refuse to send the broken
//! frames, and would hide whether the server's Close frame came before the TCP close.

use anyhow::{Context, Result, bail};
use realtime_tests::{STEP_TIMEOUT, TestServer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A WebSocket connection driven byte by byte.
struct RawSocket {
    tcp: TcpStream,
    /// Bytes read but not yet parsed.
    buffered: Vec<u8>,
}

/// What the server sent back as a frame.
#[derive(Debug, PartialEq)]
enum ServerFrame {
    Text(String),
    Close { code: u16, reason: String },
    Other(u8),
}

/// The answer to an upgrade request: its status line's code, and the socket if it upgraded.
struct Upgrade {
    status: u16,
    head: String,
    socket: RawSocket,
}

impl RawSocket {
    /// Sends an upgrade request for `path` with extra header lines, and reads the response head.
    async fn upgrade(
        server: &TestServer,
        path: &str,
        extra_headers: &[(&str, &str)],
    ) -> Result<Upgrade> {
        let mut tcp = TcpStream::connect(server.addr).await?;
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
            server.addr
        );
        for (name, value) in extra_headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut socket = RawSocket {
            tcp,
            buffered: Vec::new(),
        };
        let head_end = loop {
            if let Some(end) = socket.buffered.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            socket.read_more().await?;
        };
        let head = String::from_utf8_lossy(&socket.buffered[..head_end]).into_owned();
        socket.buffered.drain(..head_end);
        let status = head
            .split_whitespace()
            .nth(1)
            .context("status line")?
            .parse()?;
        Ok(Upgrade {
            status,
            head,
            socket,
        })
    }

    /// Connects as `user` and reads the `connected` frame.
    async fn connect(server: &TestServer, user: &str) -> Result<RawSocket> {
        let path = format!("/ws?token={}", server.token(user));
        let mut upgrade = RawSocket::upgrade(server, &path, &[]).await?;
        if upgrade.status != 101 {
            bail!("not upgraded: {}", upgrade.head);
        }
        match upgrade.socket.next_frame().await? {
            ServerFrame::Text(text) if text.contains("\"connected\"") => Ok(upgrade.socket),
            other => bail!("expected the connected frame, got {other:?}"),
        }
    }

    async fn read_more(&mut self) -> Result<()> {
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(STEP_TIMEOUT, self.tcp.read(&mut chunk))
            .await
            .context("timed out reading")??;
        if read == 0 {
            bail!("connection closed by the server");
        }
        self.buffered.extend_from_slice(&chunk[..read]);
        Ok(())
    }

    async fn fill(&mut self, bytes: usize) -> Result<()> {
        while self.buffered.len() < bytes {
            self.read_more().await?;
        }
        Ok(())
    }

    /// Reads one (unmasked, unfragmented) frame from the server.
    async fn next_frame(&mut self) -> Result<ServerFrame> {
        self.fill(2).await?;
        let opcode = self.buffered[0] & 0x0f;
        let (length, header) = match self.buffered[1] & 0x7f {
            126 => {
                self.fill(4).await?;
                (
                    u16::from_be_bytes([self.buffered[2], self.buffered[3]]) as usize,
                    4,
                )
            }
            127 => bail!("unexpectedly large frame"),
            length => (length as usize, 2),
        };
        self.fill(header + length).await?;
        let payload: Vec<u8> = self
            .buffered
            .drain(..header + length)
            .skip(header)
            .collect();
        Ok(match opcode {
            0x1 => ServerFrame::Text(String::from_utf8(payload)?),
            0x8 => ServerFrame::Close {
                code: u16::from_be_bytes([payload[0], payload[1]]),
                reason: String::from_utf8(payload[2..].to_vec())?,
            },
            other => ServerFrame::Other(other),
        })
    }

    /// The next Close frame, skipping pings and pushes.
    async fn next_close(&mut self) -> Result<(u16, String)> {
        loop {
            if let ServerFrame::Close { code, reason } = self.next_frame().await? {
                return Ok((code, reason));
            }
        }
    }

    /// Whether the server closes TCP within the step timeout (after its Close frame).
    async fn tcp_closes(&mut self) -> bool {
        let mut chunk = [0u8; 64];
        loop {
            match tokio::time::timeout(STEP_TIMEOUT, self.tcp.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.tcp.write_all(bytes).await?;
        Ok(())
    }
}

/// A client frame: `first` is the FIN/RSV/opcode byte; masked as RFC 6455 requires unless told.
fn client_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut frame = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        length @ 0..=125 => frame.push(mask_bit | length as u8),
        length => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(length as u16).to_be_bytes());
        }
    }
    if masked {
        let key = [0x12, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&key);
        frame.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, byte)| byte ^ key[i % 4]),
        );
    } else {
        frame.extend_from_slice(payload);
    }
    frame
}

fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    payload
}

#[tokio::test]
async fn a_clients_close_frame_is_answered_with_a_close_frame_before_tcp_closes() {
    let server = TestServer::start().await.unwrap();
    let mut socket = RawSocket::connect(&server, "closer").await.unwrap();
    socket
        .send(&client_frame(0x88, &close_payload(1000, "bye"), true))
        .await
        .unwrap();
    let (code, _) = socket.next_close().await.unwrap();
    assert_eq!(code, 1000, "the close is echoed (RFC 6455 section 5.5.1)");
    assert!(socket.tcp_closes().await, "the server then closes TCP");
}

#[tokio::test]
async fn framing_violations_close_with_1002() {
    let server = TestServer::start().await.unwrap();
    let violations: [(&str, Vec<u8>); 8] = [
        ("unmasked frame", client_frame(0x81, b"{}", false)),
        ("reserved bit", client_frame(0xC1, b"{}", true)),
        ("reserved data opcode", client_frame(0x83, b"{}", true)),
        ("reserved control opcode", client_frame(0x8B, b"", true)),
        (
            "continuation with nothing to continue",
            client_frame(0x80, b"{}", true),
        ),
        ("fragmented control frame", client_frame(0x09, b"", true)),
        (
            "control frame over 125 bytes",
            client_frame(0x89, &[0u8; 126], true),
        ),
        (
            "close code that may not be sent",
            client_frame(0x88, &close_payload(1005, ""), true),
        ),
    ];
    for (what, frame) in violations {
        let mut socket = RawSocket::connect(&server, "breaker").await.unwrap();
        socket.send(&frame).await.unwrap();
        let (code, reason) = socket
            .next_close()
            .await
            .unwrap_or_else(|error| panic!("{what}: no Close frame: {error}"));
        assert_eq!(code, 1002, "{what}: closed with {code} {reason}");
        assert!(
            socket.tcp_closes().await,
            "{what}: TCP closes after the Close frame"
        );
    }
}

#[tokio::test]
async fn text_that_is_not_utf8_closes_with_1007() {
    let server = TestServer::start().await.unwrap();
    for (what, frames) in [
        (
            "one frame",
            vec![client_frame(0x81, b"{\"op\":\"\xff\"}", true)],
        ),
        (
            "fragments",
            vec![
                client_frame(0x01, b"{\"op\":\"", true),
                client_frame(0x80, b"\xc3\x28\"}", true),
            ],
        ),
    ] {
        let mut socket = RawSocket::connect(&server, "garbler").await.unwrap();
        for frame in frames {
            socket.send(&frame).await.unwrap();
        }
        let (code, reason) = socket.next_close().await.unwrap();
        assert_eq!((code, reason.as_str()), (1007, "invalid_payload"), "{what}");
    }
}

/// `/graphql` upgrades through the same path as `/ws`: the answer names the subprotocol, a
/// client's Close is answered with one, and framing errors close with the same codes.
#[tokio::test]
async fn the_graphql_socket_closes_like_the_ws_socket() {
    let server = TestServer::start().await.unwrap();
    let cases: [(&str, Vec<u8>, u16); 4] = [
        (
            "the client's close",
            client_frame(0x88, &close_payload(1000, "bye"), true),
            1000,
        ),
        ("unmasked frame", client_frame(0x81, b"{}", false), 1002),
        ("reserved bit", client_frame(0xC1, b"{}", true), 1002),
        (
            "text that is not UTF-8",
            client_frame(0x81, b"{\"type\":\"\xff\"}", true),
            1007,
        ),
    ];
    for (what, frame, expected) in cases {
        let upgrade = RawSocket::upgrade(
            &server,
            "/graphql",
            &[("Sec-WebSocket-Protocol", "graphql-transport-ws")],
        )
        .await
        .unwrap();
        assert_eq!(upgrade.status, 101, "{}", upgrade.head);
        assert!(
            upgrade
                .head
                .to_ascii_lowercase()
                .contains("sec-websocket-protocol: graphql-transport-ws"),
            "{}",
            upgrade.head
        );
        let mut socket = upgrade.socket;
        socket.send(&frame).await.unwrap();
        let (code, reason) = socket
            .next_close()
            .await
            .unwrap_or_else(|error| panic!("{what}: no Close frame: {error}"));
        assert_eq!(code, expected, "{what}: closed with {code} {reason}");
        assert!(
            socket.tcp_closes().await,
            "{what}: TCP closes after the Close frame"
        );
    }
}

#[tokio::test]
async fn valid_fragmented_text_still_works() {
    let server = TestServer::start().await.unwrap();
    let mut socket = RawSocket::connect(&server, "fragments").await.unwrap();
    socket
        .send(&client_frame(0x01, br#"{"id":1,"op":"#, true))
        .await
        .unwrap();
    socket
        .send(&client_frame(0x80, br#""heartbeat"}"#, true))
        .await
        .unwrap();
    let ServerFrame::Text(reply) = socket.next_frame().await.unwrap() else {
        panic!("expected a reply");
    };
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply, json!({"id": 1, "ok": true}));
}

#[tokio::test]
async fn refusals_arrive_as_close_codes_only_when_the_handshake_asks() {
    let server = TestServer::start_with(|settings| {
        settings.server.max_connections = 1;
        settings.server.allowed_origins = vec!["http://app.test".to_owned()];
    })
    .await
    .unwrap();

    // Without `refusal=close`, refusals stay HTTP errors before any upgrade.
    let plain = RawSocket::upgrade(&server, "/ws?token=garbage", &[])
        .await
        .unwrap();
    assert_eq!(plain.status, 401, "{}", plain.head);

    let mut refused = RawSocket::upgrade(&server, "/ws?token=garbage&refusal=close", &[])
        .await
        .unwrap();
    assert_eq!(refused.status, 101, "{}", refused.head);
    assert_eq!(
        refused.socket.next_close().await.unwrap(),
        (4501, "invalid_token".to_owned())
    );

    let path = format!("/ws?token={}&refusal=close", server.token("elsewhere"));
    let mut refused = RawSocket::upgrade(&server, &path, &[("Origin", "http://evil.test")])
        .await
        .unwrap();
    assert_eq!(refused.status, 101, "{}", refused.head);
    assert_eq!(
        refused.socket.next_close().await.unwrap(),
        (4502, "origin_forbidden".to_owned())
    );

    let _holder = RawSocket::connect(&server, "holder").await.unwrap();
    let path = format!("/ws?token={}", server.token("late"));
    let plain = RawSocket::upgrade(&server, &path, &[]).await.unwrap();
    assert_eq!(plain.status, 503, "{}", plain.head);
    let path = format!("/ws?token={}&refusal=close", server.token("late"));
    let mut refused = RawSocket::upgrade(&server, &path, &[]).await.unwrap();
    assert_eq!(refused.status, 101, "{}", refused.head);
    assert_eq!(
        refused.socket.next_close().await.unwrap(),
        (4006, "node_full".to_owned())
    );
}

/// `METHOD url` with an `Origin` and extra headers; returns status, headers and JSON body.
async fn http_from_origin(
    method: reqwest::Method,
    url: String,
    origin: Option<&str>,
    extra_headers: &[(&str, &str)],
    body: Option<Value>,
) -> Result<(u16, reqwest::header::HeaderMap, Value)> {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    for (name, value) in extra_headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = tokio::time::timeout(STEP_TIMEOUT, request.send()).await??;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok((status, headers, body))
}

#[tokio::test]
async fn origins_outside_the_allowed_list_are_refused_at_every_door() {
    let server = TestServer::start_with(|settings| {
        settings.server.allowed_origins = vec!["http://app.test".to_owned()];
    })
    .await
    .unwrap();
    let token = server.token("visitor");
    let bearer = format!("Bearer {token}");

    let path = format!("/ws?token={token}");
    let evil = RawSocket::upgrade(&server, &path, &[("Origin", "http://evil.test")])
        .await
        .unwrap();
    assert_eq!(evil.status, 403, "{}", evil.head);
    assert!(
        evil.head
            .to_ascii_lowercase()
            .contains("content-type: application/json")
    );
    let good = RawSocket::upgrade(&server, &path, &[("Origin", "http://app.test")])
        .await
        .unwrap();
    assert_eq!(good.status, 101, "{}", good.head);

    let graphql_socket = RawSocket::upgrade(
        &server,
        "/graphql",
        &[
            ("Origin", "http://evil.test"),
            ("Sec-WebSocket-Protocol", "graphql-transport-ws"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(graphql_socket.status, 403, "{}", graphql_socket.head);

    let query = json!({"query": "{ unreadNotificationCount }"});
    let doors = [
        (format!("http://{}/graphql", server.addr), query.clone()),
        (
            format!("http://{}/api/publish", server.addr),
            json!({"room":"chat:a","event":"e","data":{}}),
        ),
        (
            format!("http://{}/api/notifications", server.addr),
            json!({"userId":"visitor","type":"t","content":{}}),
        ),
    ];
    for (url, body) in doors {
        let (status, _, error) = http_from_origin(
            reqwest::Method::POST,
            url.clone(),
            Some("http://evil.test"),
            &[
                ("authorization", &bearer),
                ("x-api-key", realtime_tests::API_KEY),
            ],
            Some(body),
        )
        .await
        .unwrap();
        assert_eq!(status, 403, "{url}");
        assert_eq!(error["error"]["code"], "origin_forbidden", "{url}");
    }

    // The admitted origin, and requests without an Origin (services), pass.
    for origin in [Some("http://app.test"), None] {
        let (status, headers, body) = http_from_origin(
            reqwest::Method::POST,
            format!("http://{}/graphql", server.addr),
            origin,
            &[("authorization", &bearer)],
            Some(query.clone()),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{origin:?}: {body}");
        assert_eq!(body["data"]["unreadNotificationCount"], 0);
        assert_eq!(
            headers
                .get("access-control-allow-origin")
                .map(|value| value.to_str().unwrap()),
            origin,
            "the page may read the answer; no CORS header without an Origin"
        );
    }
}

#[tokio::test]
async fn cors_preflights_are_answered_for_graphql_and_the_api() {
    let server = TestServer::start().await.unwrap();
    for path in ["/graphql", "/api/publish", "/api/notifications"] {
        let (status, headers, _) = http_from_origin(
            reqwest::Method::OPTIONS,
            format!("http://{}{path}", server.addr),
            Some("http://anywhere.test"),
            &[
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization, content-type",
                ),
            ],
            None,
        )
        .await
        .unwrap();
        assert_eq!(status, 204, "{path}");
        let header = |name: &str| {
            headers
                .get(name)
                .map(|value| value.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        assert_eq!(
            header("access-control-allow-origin"),
            "*",
            "{path}: default admits any origin"
        );
        assert!(
            header("access-control-allow-methods").contains("POST"),
            "{path}"
        );
        for needed in ["authorization", "content-type", "x-api-key"] {
            assert!(
                header("access-control-allow-headers").contains(needed),
                "{path}: {needed}"
            );
        }
    }
    // A refused preflight is coded like every other refusal.
    let server = TestServer::start_with(|settings| {
        settings.server.allowed_origins = vec!["https://*.school.test".to_owned()];
    })
    .await
    .unwrap();
    let preflight = |origin: &'static str| {
        http_from_origin(
            reqwest::Method::OPTIONS,
            format!("http://{}/graphql", server.addr),
            Some(origin),
            &[("access-control-request-method", "POST")],
            None,
        )
    };
    let (status, headers, _) = preflight("https://maths.school.test").await.unwrap();
    assert_eq!(status, 204);
    assert_eq!(
        headers.get("access-control-allow-origin").unwrap(),
        "https://maths.school.test"
    );
    let (status, _, body) = preflight("https://school.test.evil").await.unwrap();
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "origin_forbidden");
}

#[tokio::test]
async fn a_bad_allowed_origins_entry_stops_startup_naming_the_key() {
    let mut settings = realtime_tests::test_settings();
    settings.server.allowed_origins = vec!["https://app.test/".to_owned()];
    let error = settings.validate().unwrap_err().to_string();
    assert!(error.contains("server.allowed_origins"), "{error}");
}

#[tokio::test]
async fn a_users_share_refusal_arrives_as_close_4007_when_asked() {
    let server = TestServer::start_with(|settings| settings.limits.max_connections_per_user = 1)
        .await
        .unwrap();
    let _held = RawSocket::connect(&server, "busy").await.unwrap();
    let path = format!("/ws?token={}&refusal=close", server.token("busy"));
    let mut refused = RawSocket::upgrade(&server, &path, &[]).await.unwrap();
    assert_eq!(refused.status, 101, "{}", refused.head);
    assert_eq!(
        refused.socket.next_close().await.unwrap(),
        (4007, "too_many_connections".to_owned())
    );
}
