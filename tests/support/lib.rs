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

/// Environment variable that runs the whole suite on the real Redis and NATS (`bash tests/run`
/// runs it both ways): `REALTIME_TEST_BACKENDS=shared`.
pub const BACKENDS_ENV: &str = "REALTIME_TEST_BACKENDS";

/// Default test settings: the shipped defaults with an API key and fast timers; on the embedded
/// backends, or on the machine's Redis and NATS (namespaced per call) when `BACKENDS_ENV` says
/// `shared`.
pub fn test_settings() -> Settings {
    let mut settings = Settings::defaults();
    settings.api.key = Some(API_KEY.to_owned());
    settings.auth.leeway_secs = 0;
    settings.server.shutdown_grace_secs = 5;
    // Tests that shut a node down expect every close at once; the drain test sets its own.
    settings.server.drain_window_secs = 0;
    settings.database.url = "sqlite::memory:".to_owned();
    if std::env::var(BACKENDS_ENV).is_ok_and(|value| value == "shared") {
        use_shared_services(&mut settings, REDIS_URL, NATS_URL);
    }
    settings
}

/// The machine's PostgreSQL (trust auth). Tests keep apart by using user ids of their own.
pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Points settings at Redis, NATS and PostgreSQL, under a namespace of their own.
fn use_shared_services(settings: &mut Settings, redis_url: &str, nats_url: &str) {
    settings.database.url = POSTGRES_URL.to_owned();
    let namespace = unique("t");
    settings.redis.url = Some(redis_url.to_owned());
    settings.redis.key_prefix = format!("{namespace}:");
    settings.nats.url = Some(nats_url.to_owned());
    settings.nats.subject_prefix = namespace.clone();
    settings.nats.queue_group = namespace;
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
        self.server.events().subscribe()
    }

    /// `GET /ready`: status and JSON body (what fails, whether the node drains).
    pub async fn ready(&self) -> Result<(u16, Value)> {
        let response = reqwest::get(format!("http://{}/ready", self.addr)).await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
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
            pings_seen: 0,
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
    /// WebSocket pings read so far (tungstenite answers them by itself).
    pub pings_seen: usize,
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

    /// The next JSON text frame, counting pings (in `pings_seen`) and skipping pongs.
    pub async fn next_json(&mut self) -> Result<Value> {
        loop {
            let message = tokio::time::timeout(STEP_TIMEOUT, self.socket.next())
                .await
                .context("timed out waiting for a frame")?
                .ok_or_else(|| anyhow!("connection ended"))??;
            match message {
                Message::Text(text) => return Ok(serde_json::from_str(&text)?),
                Message::Close(frame) => bail!("closed by server: {frame:?}"),
                Message::Ping(_) => self.pings_seen += 1,
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

    /// Pushes received while waiting for replies and not yet taken by `next_event`.
    pub fn pending_event_count(&self) -> usize {
        self.pending_events.len()
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

    /// Sends a Close frame and reads nothing more (a closing tab): drop the client next.
    pub async fn send_close(&mut self) -> Result<()> {
        self.socket.send(Message::Close(None)).await?;
        Ok(())
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

/// The machine's shared services (README: the test command starts them when they are down).
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const NATS_URL: &str = "nats://127.0.0.1:4222";

/// A name no other test uses: tests share Redis and NATS, so keys, subjects and rooms are
/// namespaced per test.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// Settings for one cluster: shared Redis and NATS, with a key prefix, subject prefix and queue
/// group of its own.
pub fn cluster_settings(redis_url: &str, nats_url: &str) -> Settings {
    let mut settings = test_settings();
    use_shared_services(&mut settings, redis_url, nats_url);
    settings
}

impl TestServer {
    /// A node with exactly these settings (a cluster's nodes share them).
    pub async fn start_node(settings: &Settings) -> Result<TestServer> {
        let settings = settings.clone();
        Self::start_with(move |target| *target = settings).await
    }

    /// A raw NATS client, as an internal service would hold.
    pub async fn nats_client(&self) -> Result<async_nats::Client> {
        let url = self
            .settings
            .nats
            .url
            .as_deref()
            .context("nats is not configured")?;
        Ok(async_nats::connect(url).await?)
    }

    /// A subject under this cluster's prefix.
    pub fn subject(&self, rest: &str) -> String {
        format!("{}.{rest}", self.settings.nats.subject_prefix)
    }
}

/// A node running on a runtime of its own, so a test can kill it the way a crash would: every
/// task stops at once, no cleanup runs, connections drop.
pub struct KillableNode {
    pub addr: SocketAddr,
    pub settings: Settings,
    runtime: Option<tokio::runtime::Runtime>,
    server: Option<Server>,
}

impl KillableNode {
    pub fn start(settings: &Settings) -> Result<KillableNode> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let settings = settings.clone();
        let server = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    runtime.block_on(async {
                        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                        Ok::<_, anyhow::Error>(Server::start(settings.clone(), listener).await?)
                    })
                })
                .join()
                .map_err(|_| anyhow!("node thread panicked"))?
        })?;
        Ok(KillableNode {
            addr: server.local_addr(),
            settings,
            runtime: Some(runtime),
            server: Some(server),
        })
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }

    /// Stops every task of the node without any cleanup (what SIGKILL leaves behind).
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Leaked on purpose: dropping the server would release its resources in order; a
            // crashed process gets no such chance.
            std::mem::forget(self.server.take());
            runtime.shutdown_background();
        }
    }
}

impl Drop for KillableNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A service process a test started for fault injection; killed when dropped.
pub struct ServiceProcess {
    child: std::process::Child,
    pub port: u16,
    _workdir: TempDir,
}

/// A scratch directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Result<TempDir> {
        let path = std::env::temp_dir().join(unique(&format!("realtime-{label}-")));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn wait_until_listening(port: u16, what: &str) -> Result<()> {
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not start listening on port {port}")
}

impl ServiceProcess {
    fn spawn(
        program: &str,
        args: &[String],
        port: u16,
        workdir: TempDir,
    ) -> Result<ServiceProcess> {
        let child = std::process::Command::new(program)
            .args(args)
            .current_dir(&workdir.0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| {
                format!("cannot start {program}: is it installed? (bash tests/run installs it)")
            })?;
        Ok(ServiceProcess {
            child,
            port,
            _workdir: workdir,
        })
    }

    /// A nats-server without JetStream on a free port (what a default nats-server runs).
    pub async fn nats_without_jetstream() -> Result<ServiceProcess> {
        Self::nats_without_jetstream_on(free_port()?).await
    }

    /// A nats-server without JetStream on `port` (a JetStream server restarted without it).
    pub async fn nats_without_jetstream_on(port: u16) -> Result<ServiceProcess> {
        let workdir = TempDir::new("nats-plain")?;
        let args = ["-a", "127.0.0.1", "-p", &port.to_string()]
            .map(String::from)
            .to_vec();
        let process = Self::spawn("nats-server", &args, port, workdir)?;
        wait_until_listening(port, "nats-server").await?;
        Ok(process)
    }

    /// A nats-server with JetStream on `port` (0 = a free one).
    pub async fn nats(port: u16) -> Result<ServiceProcess> {
        let port = if port == 0 { free_port()? } else { port };
        let workdir = TempDir::new("nats")?;
        let store = workdir.0.join("jetstream").display().to_string();
        let args = [
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-js",
            "-sd",
            &store,
        ]
        .map(String::from)
        .to_vec();
        let process = Self::spawn("nats-server", &args, port, workdir)?;
        wait_until_listening(port, "nats-server").await?;
        Ok(process)
    }

    /// A redis-server on `port` (0 = a free one), optionally a replica of `replica_of`.
    pub async fn redis(port: u16, replica_of: Option<u16>) -> Result<ServiceProcess> {
        let port = if port == 0 { free_port()? } else { port };
        let workdir = TempDir::new("redis")?;
        let mut args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .map(String::from)
        .to_vec();
        if let Some(master) = replica_of {
            args.extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string()]);
        }
        let process = Self::spawn("redis-server", &args, port, workdir)?;
        wait_until_listening(port, "redis-server").await?;
        Ok(process)
    }

    /// A Redis Sentinel watching `master_port` as `mymaster`, with fast failure detection.
    pub async fn sentinel(master_port: u16) -> Result<ServiceProcess> {
        let port = free_port()?;
        let workdir = TempDir::new("sentinel")?;
        let config = workdir.0.join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "bind 127.0.0.1\nport {port}\nsentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 3000\n\
                 sentinel parallel-syncs mymaster 1\n"
            ),
        )?;
        let args = vec![config.display().to_string(), "--sentinel".to_owned()];
        let process = Self::spawn("redis-server", &args, port, workdir)?;
        wait_until_listening(port, "redis-sentinel").await?;
        Ok(process)
    }

    /// Kills the process and waits for it to exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

impl TestServer {
    /// `POST /graphql` with an optional bearer token; returns the JSON response.
    pub async fn graphql(
        &self,
        token: Option<&str>,
        query: &str,
        variables: Value,
    ) -> Result<Value> {
        let mut request = reqwest::Client::new()
            .post(format!("http://{}/graphql", self.addr))
            .json(&json!({"query": query, "variables": variables}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Ok(request.send().await?.json().await?)
    }

    /// `POST /api/notifications` with the test key; returns status and body.
    pub async fn create_notification(&self, body: Value) -> Result<(u16, Value)> {
        let response = reqwest::Client::new()
            .post(format!("http://{}/api/notifications", self.addr))
            .header("x-api-key", API_KEY)
            .json(&body)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }
}

/// The `extensions.code` of a GraphQL response's first error.
pub fn graphql_error_code(response: &Value) -> Option<&str> {
    response["errors"][0]["extensions"]["code"].as_str()
}

/// A graphql-transport-ws client on `/graphql`.
pub struct GraphqlSubscriptionClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl GraphqlSubscriptionClient {
    /// Connects, sends `connection_init` with the token and waits for `connection_ack`.
    pub async fn connect(server: &TestServer, token: &str) -> Result<GraphqlSubscriptionClient> {
        let mut client = Self::open(server).await?;
        client.send(json!({"type":"connection_init","payload":{"Authorization": format!("Bearer {token}")}})).await?;
        let ack = client.next().await?;
        if ack["type"] != "connection_ack" {
            bail!("expected connection_ack, got {ack}");
        }
        Ok(client)
    }

    /// Opens the socket (subprotocol graphql-transport-ws) without sending `connection_init`.
    pub async fn open(server: &TestServer) -> Result<GraphqlSubscriptionClient> {
        let mut request = format!("ws://{}/graphql", server.addr).into_client_request()?;
        request
            .headers_mut()
            .insert("sec-websocket-protocol", "graphql-transport-ws".parse()?);
        let (socket, _) =
            tokio::time::timeout(STEP_TIMEOUT, tokio_tungstenite::connect_async(request)).await??;
        Ok(GraphqlSubscriptionClient { socket })
    }

    pub async fn send(&mut self, message: Value) -> Result<()> {
        self.send_text(message.to_string()).await
    }

    pub async fn send_text(&mut self, text: String) -> Result<()> {
        self.socket.send(Message::text(text)).await?;
        Ok(())
    }

    /// Reads until the server's Close frame and returns its code and reason (messages before it
    /// are skipped, pings answered); fails if the connection ends without one.
    pub async fn expect_close(&mut self) -> Result<(u16, String)> {
        loop {
            let message = tokio::time::timeout(STEP_TIMEOUT, self.socket.next())
                .await
                .context("timed out waiting for the server's close")?
                .ok_or_else(|| anyhow!("graphql socket ended without a Close frame"))??;
            if let Message::Close(frame) = message {
                let Ended::Closed { code, reason } = close_to_ended(frame) else {
                    bail!("no close code");
                };
                return Ok((code, reason));
            }
        }
    }

    /// The next protocol message (pings are answered).
    pub async fn next(&mut self) -> Result<Value> {
        loop {
            let message = tokio::time::timeout(STEP_TIMEOUT, self.socket.next())
                .await
                .context("timed out waiting for a graphql-ws message")?
                .ok_or_else(|| anyhow!("graphql socket ended"))??;
            if let Message::Text(text) = message {
                let value: Value = serde_json::from_str(&text)?;
                if value["type"] == "ping" {
                    self.send(json!({"type":"pong"})).await?;
                    continue;
                }
                return Ok(value);
            }
        }
    }
}

/// Where `bash tests/run` puts the plugin builds (`REALTIME_PLUGIN_DIR` overrides).
pub fn plugin_wasm(crate_name: &str) -> std::path::PathBuf {
    let directory = std::env::var_os("REALTIME_PLUGIN_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/wasm32-unknown-unknown/plugin")
        });
    let path = directory.join(format!("{}.wasm", crate_name.replace('-', "_")));
    assert!(
        path.is_file(),
        "{} is missing: build the plugins first (bash tests/run does: cargo build --profile plugin --target wasm32-unknown-unknown ...)",
        path.display()
    );
    path
}

/// Registers a plugin in the settings.
pub fn add_plugin(settings: &mut Settings, name: &str, path: std::path::PathBuf, config: Value) {
    settings.plugins.insert(
        name.to_owned(),
        realtime_core::config::PluginEntry { path, config },
    );
}
