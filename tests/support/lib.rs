//! Test support: start the real server on port 0, mint tokens, drive real WebSocket and HTTP
//! clients. Every wait is bounded so a broken server fails a test instead of hanging it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use realtime_core::auth::unix_now_secs;
use realtime_core::config::Settings;
use realtime_core::events::PlatformEvent;
use realtime_core::server::Server;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expected thing may take before the test fails.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The API key test servers use.
pub const API_KEY: &str = "test-api-key";

/// A server on 127.0.0.1:0 with test settings.
pub struct TestServer {
    pub server: Server,
    pub settings: Settings,
    pub addr: SocketAddr,
}

/// Default test settings: the shipped defaults with an API key and fast timers.
pub fn test_settings() -> Settings {
    let mut settings = Settings::defaults();
    settings.api.key = Some(API_KEY.to_owned());
    settings.auth.leeway_secs = 0;
    settings.server.shutdown_grace_secs = 5;
    settings
}

impl TestServer {
    pub async fn start() -> Result<TestServer> {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(customize: impl FnOnce(&mut Settings)) -> Result<TestServer> {
        let mut settings = test_settings();
        customize(&mut settings);
        settings.validate()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let server = Server::start(settings.clone(), listener).await?;
        let addr = server.local_addr();
        Ok(TestServer {
            server,
            settings,
            addr,
        })
    }

    /// A token for `user` signed with the configured secret.
    pub fn token(&self, user: &str) -> String {
        self.token_with(user, &[], 3600)
    }

    pub fn token_with(&self, user: &str, rooms: &[&str], ttl_secs: u64) -> String {
        let secret = self
            .settings
            .auth
            .jwt_secret
            .as_deref()
            .expect("tests use a shared secret");
        sign_hs256(
            secret,
            json!({"sub": user, "exp": unix_now_secs() + ttl_secs, "rooms": rooms}),
        )
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }

    pub async fn connect(&self, user: &str) -> Result<Client> {
        Client::connect(&self.ws_url(&self.token(user))).await
    }

    pub async fn connect_with_rooms(&self, user: &str, rooms: &[&str]) -> Result<Client> {
        Client::connect(&self.ws_url(&self.token_with(user, rooms, 3600))).await
    }

    pub fn events(&self) -> broadcast::Receiver<PlatformEvent> {
        self.server.node().events().subscribe()
    }

    /// `POST /api/publish` with the test key; returns status and JSON body.
    pub async fn publish(&self, body: Value) -> Result<(u16, Value)> {
        self.publish_with_key(body, Some(API_KEY)).await
    }

    pub async fn publish_with_key(&self, body: Value, key: Option<&str>) -> Result<(u16, Value)> {
        let mut request = reqwest::Client::new()
            .post(format!("http://{}/api/publish", self.addr))
            .json(&body);
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }
}

pub fn sign_hs256(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("test token signs")
}

/// What an attempted handshake produced.
#[derive(Debug)]
pub enum Handshake {
    Upgraded(Box<Client>),
    Refused { status: u16, body: Value },
}

/// Attempts a handshake with an optional `Authorization` header.
pub async fn handshake(url: &str, authorization: Option<&str>) -> Result<Handshake> {
    let mut request = url.into_client_request()?;
    if let Some(value) = authorization {
        request
            .headers_mut()
            .insert("authorization", value.parse()?);
    }
    match tokio::time::timeout(STEP_TIMEOUT, tokio_tungstenite::connect_async(request)).await? {
        Ok((socket, _)) => Ok(Handshake::Upgraded(Box::new(Client {
            socket,
            pending_events: Vec::new(),
            hello: Value::Null,
        }))),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .map(serde_json::from_slice)
                .transpose()?
                .unwrap_or(Value::Null);
            Ok(Handshake::Refused { status, body })
        }
        Err(error) => Err(error.into()),
    }
}

/// A WebSocket client speaking the JSON protocol.
#[derive(Debug)]
pub struct Client {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Pushes received while waiting for a reply, in arrival order.
    pending_events: Vec<Value>,
    /// The `connected` frame, once read.
    pub hello: Value,
}

/// What the server did to end a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Closed { code: u16, reason: String },
    Dropped,
}

impl Client {
    /// Connects and reads the `connected` frame into `hello`.
    pub async fn connect(url: &str) -> Result<Client> {
        match handshake(url, None).await? {
            Handshake::Upgraded(mut client) => {
                client.expect_connected().await?;
                Ok(*client)
            }
            Handshake::Refused { status, body } => bail!("handshake refused: {status} {body}"),
        }
    }

    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<()> {
        self.socket.send(Message::text(text.into())).await?;
        Ok(())
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.socket.send(Message::binary(bytes)).await?;
        Ok(())
    }

    /// The next JSON text frame, skipping pings and pongs.
    pub async fn next_json(&mut self) -> Result<Value> {
        loop {
            let message = tokio::time::timeout(STEP_TIMEOUT, self.socket.next())
                .await
                .context("timed out waiting for a frame")?
                .ok_or_else(|| anyhow!("connection ended"))??;
            match message {
                Message::Text(text) => return Ok(serde_json::from_str(&text)?),
                Message::Close(frame) => bail!("closed by server: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// Reads the `connected` frame (the first frame of every connection).
    pub async fn expect_connected(&mut self) -> Result<Value> {
        let frame = self.next_json().await?;
        if frame["type"] != "connected" {
            bail!("expected the connected frame, got {frame}");
        }
        self.hello = frame.clone();
        Ok(frame)
    }

    /// Sends a request with `id` and returns its reply, keeping pushes for `next_event`.
    pub async fn request(&mut self, mut request: Value, id: u64) -> Result<Value> {
        request["id"] = json!(id);
        self.send_text(request.to_string()).await?;
        self.reply_to(id).await
    }

    /// Waits for the reply with `id`, keeping pushes for `next_event`.
    pub async fn reply_to(&mut self, id: u64) -> Result<Value> {
        loop {
            let frame = self.next_json().await?;
            if frame["type"] == "event" {
                self.pending_events.push(frame);
                continue;
            }
            if frame["id"] == json!(id) {
                return Ok(frame);
            }
            bail!("reply out of order: wanted id {id}, got {frame}");
        }
    }

    /// Sends a request and requires `ok: true`.
    pub async fn ok(&mut self, request: Value, id: u64) -> Result<Value> {
        let reply = self.request(request, id).await?;
        if reply["ok"] != true {
            bail!("request {id} failed: {reply}");
        }
        Ok(reply)
    }

    /// Sends a request and returns the error code it failed with.
    pub async fn error_code(&mut self, request: Value, id: u64) -> Result<String> {
        let reply = self.request(request, id).await?;
        if reply["ok"] != false {
            bail!("request {id} should have failed: {reply}");
        }
        Ok(reply["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    pub async fn join(&mut self, room: &str) -> Result<Value> {
        self.ok(json!({"op": "join", "room": room}), 1_000).await
    }

    /// The next push (`type: event`), from the buffer or the socket.
    pub async fn next_event(&mut self) -> Result<Value> {
        if !self.pending_events.is_empty() {
            return Ok(self.pending_events.remove(0));
        }
        loop {
            let frame = self.next_json().await?;
            if frame["type"] == "event" {
                return Ok(frame);
            }
        }
    }

    /// The next push with this event name, skipping others.
    pub async fn next_event_named(&mut self, name: &str) -> Result<Value> {
        loop {
            let event = self.next_event().await?;
            if event["event"] == name {
                return Ok(event);
            }
        }
    }

    /// Asserts that nothing arrives within `window` (pings aside).
    pub async fn expect_silence(&mut self, window: Duration) -> Result<()> {
        if let Some(event) = self.pending_events.first() {
            bail!("unexpected pending push: {event}");
        }
        match tokio::time::timeout(window, self.next_json()).await {
            Err(_) => Ok(()),
            Ok(Ok(frame)) => bail!("unexpected frame: {frame}"),
            Ok(Err(error)) => Err(error),
        }
    }

    /// The next JSON frame, or how the connection ended.
    pub async fn next_json_or_end(&mut self) -> Result<std::result::Result<Value, Ended>> {
        loop {
            let next = tokio::time::timeout(STEP_TIMEOUT, self.socket.next())
                .await
                .context("timed out waiting for a frame or the end")?;
            match next {
                None | Some(Err(_)) => return Ok(Err(Ended::Dropped)),
                Some(Ok(Message::Text(text))) => return Ok(Ok(serde_json::from_str(&text)?)),
                Some(Ok(Message::Close(frame))) => return Ok(Err(close_to_ended(frame))),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Reads until the server ends the connection and reports how.
    pub async fn expect_end(&mut self) -> Result<Ended> {
        loop {
            let next = tokio::time::timeout(STEP_TIMEOUT, self.socket.next())
                .await
                .context("timed out waiting for the connection to end")?;
            match next {
                None | Some(Err(_)) => return Ok(Ended::Dropped),
                Some(Ok(Message::Close(frame))) => return Ok(close_to_ended(frame)),
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn close(mut self) -> Result<()> {
        self.socket.close(None).await?;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(STEP_TIMEOUT, self.socket.next()).await {}
        Ok(())
    }
}

fn close_to_ended(frame: Option<CloseFrame>) -> Ended {
    let (code, reason) = frame
        .map(|CloseFrame { code, reason }| (u16::from(code), reason.to_string()))
        .unwrap_or((1005, String::new()));
    Ended::Closed { code, reason }
}

/// Waits for a platform event matching `predicate`.
pub async fn wait_for_event(
    events: &mut broadcast::Receiver<PlatformEvent>,
    within: Duration,
    predicate: impl Fn(&PlatformEvent) -> bool,
) -> Result<PlatformEvent> {
    tokio::time::timeout(within, async {
        loop {
            match events.recv().await {
                Ok(event) if predicate(&event) => return Ok(event),
                Ok(_) => continue,
                Err(error) => return Err(anyhow!("event bus: {error}")),
            }
        }
    })
    .await
    .context("timed out waiting for a platform event")?
}
