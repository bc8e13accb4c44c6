//! Starting and stopping a node: backends, background tasks, the HTTP listener, shutdown.
//!
//! Shutdown is a parameter ([`run`]) or an explicit call ([`Server::shutdown`]); tests start the
//! real server on port 0 with [`Server::start`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use tokio_util::sync::CancellationToken;

use crate::auth::{KeyError, TokenVerifier};
use crate::config::{BrokerChoice, Settings};
use crate::hub::Hub;
use crate::nats_bridge;
use crate::node::{Backends, Node};
use crate::notification_ingest as ingest;
use crate::notifications::NotificationService;
use crate::notifications::sql::{self, DatabaseError, SqlNotificationStore};
use crate::plugins::PluginHost;
use crate::protocol::CloseCode;
use crate::stores::history_jetstream::JetStreamHistory;
use crate::stores::memory::{
    MemoryBroker, MemoryBus, MemoryLeases, MemoryPresenceStore, MemoryRoomStore,
};
use crate::stores::memory::{MemoryHistory, MemoryRateLimiter};
use crate::stores::nats::{self as nats_store, NatsBroker};
use crate::stores::nats_round_trip::ServerRoundTrip;
use crate::stores::redis::RedisRateLimiter;
use crate::stores::redis::{RedisBroker, RedisConnector, RedisPresenceStore, RedisRoomStore};
use crate::stores::{
    Broker, DeliveryHandler, HistoryStore, PresenceStore, RateLimiter, RoomStore, StoreError,
};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error("{0}")]
    Plugin(String),
    #[error("configuration key `nats.url`: {0}")]
    NoJetStream(String),
    #[error("configuration key `auth.jwks_url`: {0}")]
    Jwks(String),
    #[error("configuration key `{key}`: cannot connect: {source}")]
    Backend {
        key: &'static str,
        source: StoreError,
    },
}

/// How often shutdown checks whether every socket has closed and been torn down.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// A running node.
pub struct Server {
    node: Arc<Node>,
    local_addr: SocketAddr,
    http: crate::transport::HttpServer,
    background: Vec<JoinHandle<()>>,
    /// Stops the NATS event publisher once the sockets have drained.
    stop_event_publisher: CancellationToken,
    event_publisher: Option<JoinHandle<()>>,
}

/// Connections to the shared services the configuration names.
struct Connections {
    redis: Option<Arc<RedisConnector>>,
    nats: Option<async_nats::Client>,
}

impl Connections {
    async fn open(settings: &Settings, node_id: &str) -> Result<Connections, StartError> {
        let redis = match settings.redis.is_configured() {
            true => Some(
                RedisConnector::connect(&settings.redis)
                    .await
                    .map_err(|source| StartError::Backend {
                        key: if settings.redis.url.is_some() {
                            "redis.url"
                        } else {
                            "redis.sentinel"
                        },
                        source,
                    })?,
            ),
            false => None,
        };
        let nats = match &settings.nats.url {
            Some(url) => Some(nats_store::connect(url, node_id).await.map_err(|source| {
                StartError::Backend {
                    key: "nats.url",
                    source,
                }
            })?),
            None => None,
        };
        Ok(Connections { redis, nats })
    }

    /// Redis stores when Redis is configured, memory otherwise; the broker as configured; the
    /// notification store on the (migrated) database.
    async fn backends(&self, settings: &Settings, hub: &Arc<Hub>) -> Result<Backends, StartError> {
        let pool = sql::connect(&settings.database).await?;
        let applied = sql::migrate(&pool).await?;
        tracing::info!(applied, "database migrations checked");
        let notifications = Arc::new(NotificationService::new(Arc::new(
            SqlNotificationStore::new(pool),
        )));
        let rate_limiter: Arc<dyn RateLimiter> = match &self.redis {
            Some(redis) => Arc::new(RedisRateLimiter::new(redis.clone())),
            None => Arc::new(MemoryRateLimiter::new()),
        };
        let delivering_hub = hub.clone();
        let deliver: DeliveryHandler = Arc::new(move |topic, frame| {
            delivering_hub.deliver(topic, &frame);
        });
        let (presence, rooms): (Arc<dyn PresenceStore>, Arc<dyn RoomStore>) = match &self.redis {
            Some(redis) => (
                Arc::new(RedisPresenceStore::new(redis.clone())),
                Arc::new(RedisRoomStore::new(redis.clone())),
            ),
            None => {
                let leases = MemoryLeases::new();
                (
                    Arc::new(MemoryPresenceStore::new(leases.clone())),
                    Arc::new(MemoryRoomStore::new(leases)),
                )
            }
        };
        // One echo per NATS connection, for the broker's joins and for readiness.
        let nats_round_trip = self
            .nats
            .as_ref()
            .map(|nats| Arc::new(ServerRoundTrip::new(nats.clone())));
        let broker: Arc<dyn Broker> = match (settings.effective_broker(), &self.nats, &self.redis) {
            (BrokerChoice::Nats, Some(nats), _) => Arc::new(NatsBroker::new(
                nats.clone(),
                &settings.nats.subject_prefix,
                deliver,
                nats_round_trip.clone().expect("made with the connection"),
            )),
            (BrokerChoice::Redis, _, Some(redis)) => Arc::new(
                RedisBroker::connect(&settings.redis, redis.clone(), deliver)
                    .await
                    .map_err(|source| StartError::Backend {
                        key: "broker",
                        source,
                    })?,
            ),
            // Validation guarantees the chosen broker's connection exists; memory otherwise.
            _ => Arc::new(MemoryBroker::new(MemoryBus::new(), deliver)),
        };
        let history = history_store(settings, self.nats.as_ref());
        let readiness = crate::readiness::Readiness::new(
            self.redis.clone(),
            self.nats.clone().zip(nats_round_trip),
            notifications.store().clone(),
        );
        Ok(Backends {
            broker,
            presence,
            rooms,
            rate_limiter,
            notifications,
            history,
            readiness,
        })
    }
}

/// Where room history lives: JetStream when NATS is configured (every node serves the same
/// history); memory on a single node; nowhere in a Redis-only cluster, where per-node memory
/// would give each node its own offsets (rooms then carry no positions and a reconnecting
/// client is told `recovered: false`).
fn history_store(
    settings: &Settings,
    nats: Option<&async_nats::Client>,
) -> Option<Arc<dyn HistoryStore>> {
    if let Some(nats) = nats {
        return Some(Arc::new(JetStreamHistory::new(
            nats.clone(),
            &settings.nats.subject_prefix,
        )));
    }
    if settings.effective_broker() == BrokerChoice::Memory {
        return Some(Arc::new(MemoryHistory::new()));
    }
    let with_history: Vec<&str> = settings
        .room_types
        .iter()
        .filter(|(_, room_type)| room_type.history_size > 0)
        .map(|(name, _)| name.as_str())
        .collect();
    if !with_history.is_empty() {
        tracing::warn!(
            room_types = ?with_history,
            "room history needs NATS JetStream in a cluster (set nats.url); these rooms keep none"
        );
    }
    None
}

/// Loads the configured plugins (compiling is CPU work: off the async workers).
async fn load_plugins(settings: Arc<Settings>) -> Result<Option<Arc<PluginHost>>, StartError> {
    let loaded = tokio::task::spawn_blocking(move || PluginHost::load(&settings))
        .await
        .map_err(|error| StartError::Plugin(error.to_string()))?;
    Ok(loaded
        .map_err(|error| StartError::Plugin(error.to_string()))?
        .map(Arc::new))
}

/// Checks plugin files every `plugin_runtime.reload_interval_ms` and swaps in changed versions.
fn spawn_plugin_reloader(
    plugins: Arc<PluginHost>,
    settings: &Settings,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let interval = Duration::from_millis(settings.plugin_runtime.reload_interval_ms);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {
                    let plugins = plugins.clone();
                    let _ = tokio::task::spawn_blocking(move || plugins.reload(false)).await;
                }
            }
        }
    })
}

/// Emits `user.offline` for users whose presence expired, every `presence.sweep_interval_secs`.
fn spawn_offline_sweeper(node: Arc<Node>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(node.settings().presence.sweep_interval());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = node.shutdown_token().cancelled() => return,
                _ = ticks.tick() => {
                    if let Err(error) = node.sweep_offline().await {
                        tracing::warn!(%error, "offline sweep failed; retrying next tick");
                    }
                }
            }
        }
    })
}

/// Pushes batched joins and leaves (`announce = "batched"`) as their rooms' intervals end. The
/// diffs still pending at shutdown go out in [`Server::shutdown`], after the last socket's leave.
fn spawn_presence_diff_pusher(node: Arc<Node>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            // Only the wait is cut short by shutdown; diffs taken are pushed in full.
            let due = tokio::select! {
                _ = node.shutdown_token().cancelled() => return,
                due = node.due_presence_diffs() => due,
            };
            node.push_presence_diffs(due).await;
        }
    })
}

/// Renews the node's lease every third of `presence.node_lease_secs` (the lease is also its
/// announcement for cluster info): a node that stops (crash, partition) loses its sockets and
/// memberships, and drops out of `GET /api/cluster/info`, within one lease. A lapsed lease,
/// once granted again, registers everything local again (see [`Node::announce`]).
fn spawn_announcer(node: Arc<Node>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let lease = node.settings().presence.node_lease();
        loop {
            tokio::select! {
                _ = node.shutdown_token().cancelled() => return,
                _ = tokio::time::sleep(lease / 3) => {}
            }
            if let Err(error) = node.announce(lease).await {
                tracing::warn!(%error, "lease renewal failed; retrying");
            }
        }
    })
}

/// The verifier for the configured key source; with `auth.jwks_url`, after fetching the set.
pub async fn token_verifier(
    auth: &crate::config::AuthSettings,
) -> Result<TokenVerifier, StartError> {
    let Some(url) = &auth.jwks_url else {
        return Ok(TokenVerifier::from_settings(auth)?);
    };
    let source = crate::jwks::JwksSource {
        url: url.clone(),
        issuer: auth.issuer.clone(),
        refresh_every: Duration::from_secs(auth.jwks_refresh_secs),
        min_refetch: Duration::from_secs(auth.jwks_min_refetch_secs),
    };
    let cache = crate::jwks::JwksCache::start(source)
        .await
        .map_err(StartError::Jwks)?;
    Ok(TokenVerifier::with_jwks(auth, Arc::new(cache)))
}

impl Server {
    /// Starts a node on `listener` (bind port 0 in tests) and returns once it accepts.
    pub async fn start(settings: Settings, listener: TcpListener) -> Result<Server, StartError> {
        let settings = Arc::new(settings);
        let verifier = token_verifier(&settings.auth).await?;
        let node_id: Arc<str> = Arc::from(settings.resolved_node_id());
        let connections = Connections::open(&settings, &node_id).await?;
        let hub = Arc::new(Hub::new(settings.server.fanout_yield_every));
        let backends = connections.backends(&settings, &hub).await?;
        let plugins = load_plugins(settings.clone()).await?;
        let node = Arc::new(Node::new(
            settings.clone(),
            node_id,
            verifier,
            hub,
            backends,
            plugins,
        ));
        crate::metrics::register_node(settings.server.max_connections);
        // The first lease before the first socket: sockets and joins register under it. A store
        // that is down now only delays that: the announcer keeps trying, and its first grant
        // registers whatever connected meanwhile.
        if let Err(error) = node.announce(settings.presence.node_lease()).await {
            tracing::warn!(%error, "no lease yet (the presence store is unreachable); retrying");
        }
        node.subscribe_control()
            .await
            .map_err(|source| StartError::Backend {
                key: "broker",
                source,
            })?;
        let mut background = vec![
            spawn_offline_sweeper(node.clone()),
            spawn_announcer(node.clone()),
            spawn_presence_diff_pusher(node.clone()),
            crate::metrics::spawn_upkeep(),
            crate::allocator::spawn_trimmer(
                {
                    let node = node.clone();
                    move || node.hub().connection_count()
                },
                node.settings().presence.ttl() + node.settings().presence.sweep_interval(),
                node.shutdown_token().clone(),
            ),
        ];
        if let Some(jwks) = node.jwks() {
            background.push(crate::jwks::JwksCache::spawn_refresher(
                jwks.clone(),
                node.shutdown_token().clone(),
            ));
        }
        if let Some(plugins) = node.plugins() {
            background.push(spawn_plugin_reloader(
                plugins.clone(),
                &settings,
                node.shutdown_token().clone(),
            ));
        }
        let stop_event_publisher = CancellationToken::new();
        let mut event_publisher = None;
        if let Some(nats) = &connections.nats {
            event_publisher = Some(nats_bridge::spawn_event_publisher(
                &node,
                nats.clone(),
                stop_event_publisher.clone(),
            ));
            let inbound = nats_bridge::spawn_ingest(node.clone(), nats.clone())
                .await
                .map_err(|source| StartError::Backend {
                    key: "nats.url",
                    source,
                })?;
            background.push(inbound);
            let notification_ingest = ingest::spawn(node.clone(), nats.clone()).await.map_err(
                |problem| match problem {
                    ingest::IngestSetupError::NoJetStream(_) => {
                        StartError::NoJetStream(problem.to_string())
                    }
                    ingest::IngestSetupError::Other(problem) => StartError::Backend {
                        key: "nats.url",
                        source: StoreError::Unavailable(problem),
                    },
                },
            )?;
            background.push(notification_ingest);
        }
        let local_addr = listener.local_addr()?;
        let http = crate::transport::serve(listener, node.clone())?;
        tracing::info!(
            node = node.node_id(),
            %local_addr,
            broker = ?settings.effective_broker(),
            redis = settings.redis.is_configured(),
            nats = settings.nats.url.is_some(),
            "realtime node listening"
        );
        Ok(Server {
            node,
            local_addr,
            http,
            background,
            stop_event_publisher,
            event_publisher,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The node's name (`server.node_id`, or the one generated at startup).
    pub fn node_id(&self) -> &str {
        self.node.node_id()
    }

    /// The node's platform events, as the NATS publisher sees them (subscribe to watch them).
    pub fn events(&self) -> &crate::events::EventBus {
        self.node.events()
    }

    /// Frames the broker has handed to this node so far (per-room interest keeps this
    /// proportional to the rooms the node has members in).
    pub fn broker_deliveries(&self) -> u64 {
        self.node.hub().broker_deliveries()
    }

    /// Re-reads every plugin file now (what `SIGHUP` does); returns how many were swapped.
    pub async fn reload_plugins(&self) -> usize {
        match self.node.plugins() {
            Some(plugins) => {
                let plugins = plugins.clone();
                tokio::task::spawn_blocking(move || plugins.reload(true))
                    .await
                    .unwrap_or(0)
            }
            None => 0,
        }
    }

    /// Drains, then stops: readiness turns false and new handshakes are refused at once; the
    /// sockets are closed with 1012 spread over `server.drain_window_secs`; then the listener
    /// stops and the node waits up to `server.shutdown_grace_secs` for every socket's teardown.
    pub async fn shutdown(self) {
        let server = &self.node.settings().server;
        let (grace, window) = (
            Duration::from_secs(server.shutdown_grace_secs),
            Duration::from_secs(server.drain_window_secs),
        );
        tracing::info!(
            connections = self.node.hub().connection_count(),
            drain_window_secs = window.as_secs(),
            "draining"
        );
        self.node.start_draining();
        self.node
            .hub()
            .close_all_over(CloseCode::Restart, window)
            .await;
        tracing::info!("drained; shutting down");
        self.http.stop_graceful(grace);
        self.node.shutdown_token().cancel();
        // Admitted, not registered: a socket leaves the hub before its teardown's backend calls
        // (rooms, presence, `socket.disconnect`), and those must not be cut off by the exit.
        let drained = tokio::time::timeout(grace, async {
            while self.node.admitted_count() > 0 {
                tokio::time::sleep(DRAIN_POLL).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                remaining = self.node.admitted_count(),
                "shutdown grace ran out with sockets still open or tearing down"
            );
        }
        // The leaves of the sockets just closed, in rooms that batch them.
        self.node.flush_presence_diffs().await;
        for task in &self.background {
            task.abort();
        }
        self.stop_event_publisher.cancel();
        if let Some(publisher) = self.event_publisher {
            let _ = tokio::time::timeout(grace, publisher).await;
        }
        let _ = tokio::time::timeout(grace, self.http.finished()).await;
        tracing::info!("stopped");
    }
}

/// Runs a node until `shutdown` resolves, then shuts it down.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let server = Server::start(settings, listener).await?;
    shutdown.await;
    server.shutdown().await;
    Ok(())
}
