//! Starting and stopping a node: backends, background tasks, the HTTP listener, shutdown.
//!
//! Shutdown is a parameter ([`run`]) or an explicit call ([`Server::shutdown`]); tests start the
//! real server on port 0 with [`Server::start`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use salvo::conn::tcp::TcpAcceptor;
use salvo::server::ServerHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::auth::{KeyError, TokenVerifier};
use crate::config::Settings;
use crate::hub::Hub;
use crate::node::{Backends, Node};
use crate::protocol::CloseCode;
use crate::stores::DeliveryHandler;
use crate::stores::memory::{MemoryBroker, MemoryBus, MemoryPresenceStore, MemoryRoomStore};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
}

/// How often shutdown checks whether every socket has closed.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// A running node.
pub struct Server {
    node: Arc<Node>,
    local_addr: SocketAddr,
    http: ServerHandle,
    http_task: JoinHandle<()>,
    sweeper: JoinHandle<()>,
}

/// The embedded backends: one process, in memory.
fn memory_backends(hub: &Arc<Hub>) -> Backends {
    let delivering_hub = hub.clone();
    let deliver: DeliveryHandler = Arc::new(move |topic, frame| {
        delivering_hub.deliver(topic, &frame);
    });
    Backends {
        broker: Arc::new(MemoryBroker::new(MemoryBus::new(), deliver)),
        presence: Arc::new(MemoryPresenceStore::new()),
        rooms: Arc::new(MemoryRoomStore::new()),
    }
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

impl Server {
    /// Starts a node on `listener` (bind port 0 in tests) and returns once it accepts.
    pub async fn start(settings: Settings, listener: TcpListener) -> Result<Server, StartError> {
        let settings = Arc::new(settings);
        let verifier = TokenVerifier::from_settings(&settings.auth)?;
        let node_id: Arc<str> = Arc::from(settings.resolved_node_id());
        let hub = Arc::new(Hub::new());
        let backends = memory_backends(&hub);
        let node = Arc::new(Node::new(
            settings.clone(),
            node_id,
            verifier,
            hub,
            backends,
        ));
        let local_addr = listener.local_addr()?;
        let acceptor = TcpAcceptor::try_from(listener)?;
        let http_server = salvo::Server::new(acceptor);
        let http = http_server.handle();
        let router = crate::transport::router(node.clone());
        let http_task = tokio::spawn(http_server.serve(router));
        let sweeper = spawn_offline_sweeper(node.clone());
        tracing::info!(node = node.node_id(), %local_addr, "realtime node listening");
        Ok(Server {
            node,
            local_addr,
            http,
            http_task,
            sweeper,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Stops accepting, closes every socket with 1012, and waits up to
    /// `server.shutdown_grace_secs` for them to finish.
    pub async fn shutdown(self) {
        let grace = Duration::from_secs(self.node.settings().server.shutdown_grace_secs);
        tracing::info!(
            connections = self.node.hub().connection_count(),
            "shutting down"
        );
        self.http.stop_graceful(grace);
        self.node.shutdown_token().cancel();
        self.node.hub().close_all(CloseCode::Restart);
        let drained = tokio::time::timeout(grace, async {
            while self.node.hub().connection_count() > 0 {
                tokio::time::sleep(DRAIN_POLL).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                remaining = self.node.hub().connection_count(),
                "shutdown grace ran out with sockets still open"
            );
        }
        self.sweeper.abort();
        let _ = tokio::time::timeout(grace, self.http_task).await;
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
