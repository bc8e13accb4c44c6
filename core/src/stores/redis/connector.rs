//! The connection every Redis backend uses: reconnecting, bounded by `redis.command_timeout_ms`,
//! and following the master Sentinel names after a failover.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{Client, ErrorKind, IntoConnectionInfo, ProtocolVersion, RedisError, ServerErrorKind};
use tokio::sync::mpsc;

use super::store_error;
use crate::config::RedisSettings;
use crate::stores::StoreError;

/// Where connections go: one address, or whatever master Sentinel names.
enum Target {
    Direct(Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

/// A reconnecting Redis connection that follows Sentinel failovers.
///
/// `ConnectionManager` reconnects to the address it was built for; under Sentinel the master's
/// address changes, so on a connection-level error (or `READONLY` from a demoted master) the
/// master is looked up again and the manager replaced.
pub struct RedisConnector {
    target: Target,
    current: RwLock<ConnectionManager>,
    settings: RedisSettings,
    /// Where Pub/Sub messages go (RESP3 subscription connections only).
    push: Option<mpsc::UnboundedSender<redis::PushInfo>>,
    /// Channels subscribed through this connector, re-subscribed after a Sentinel failover
    /// (the manager resubscribes by itself only on reconnects to the same address).
    channels: parking_lot::Mutex<std::collections::HashSet<String>>,
}

impl RedisConnector {
    /// Connects for commands (RESP2).
    pub async fn connect(settings: &RedisSettings) -> Result<Arc<RedisConnector>, StoreError> {
        Self::connect_with(settings, ProtocolVersion::RESP2, None).await
    }

    pub(super) async fn connect_with(
        settings: &RedisSettings,
        protocol: ProtocolVersion,
        push: Option<mpsc::UnboundedSender<redis::PushInfo>>,
    ) -> Result<Arc<RedisConnector>, StoreError> {
        let target = match (&settings.url, &settings.sentinel) {
            (Some(url), _) => {
                Target::Direct(client_for(url.as_str(), protocol).map_err(store_error)?)
            }
            (None, Some(sentinel)) => {
                let node_info = redis::sentinel::SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(
                        redis::RedisConnectionInfo::default().set_protocol(protocol),
                    );
                let client = SentinelClient::build(
                    sentinel.addresses.clone(),
                    sentinel.master_name.clone(),
                    Some(node_info),
                    SentinelServerType::Master,
                )
                .map_err(store_error)?;
                Target::Sentinel(tokio::sync::Mutex::new(client))
            }
            (None, None) => return Err(StoreError::Unavailable("redis is not configured".into())),
        };
        let client = resolve(&target).await?;
        let manager = manager_for(client, settings, push.clone()).await?;
        Ok(Arc::new(RedisConnector {
            target,
            current: RwLock::new(manager),
            settings: settings.clone(),
            push,
            channels: parking_lot::Mutex::default(),
        }))
    }

    fn connection(&self) -> ConnectionManager {
        self.current.read().clone()
    }

    /// Runs `operation`; after a connection-level failure under Sentinel, finds the current
    /// master and tries once more.
    pub async fn run<T, F, Fut>(&self, operation: F) -> Result<T, StoreError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let started = std::time::Instant::now();
        let result = self.run_once_or_follow(operation).await;
        crate::metrics::record_backend_call("redis", started, result.is_err());
        result
    }

    /// `run` without the metrics.
    async fn run_once_or_follow<T, F, Fut>(&self, operation: F) -> Result<T, StoreError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let timeout = self.command_timeout();
        let first = with_timeout(timeout, operation(self.connection())).await;
        match first {
            Err(error)
                if matches!(self.target, Target::Sentinel(_)) && needs_new_master(&error) =>
            {
                tracing::warn!(%error, "redis master unreachable; asking Sentinel");
                self.follow_master().await?;
                with_timeout(timeout, operation(self.connection()))
                    .await
                    .map_err(store_error)
            }
            other => other.map_err(store_error),
        }
    }

    /// Replaces the connection with one to the master Sentinel names now.
    async fn follow_master(&self) -> Result<(), StoreError> {
        let client = resolve(&self.target).await?;
        let mut manager = manager_for(client, &self.settings, self.push.clone()).await?;
        let channels: Vec<String> = self.channels.lock().iter().cloned().collect();
        for channel in channels {
            manager.subscribe(channel).await.map_err(store_error)?;
        }
        *self.current.write() = manager;
        Ok(())
    }

    /// SUBSCRIBE on a RESP3 connection made with a push sender.
    pub(super) async fn subscribe(&self, channel: &str) -> Result<(), StoreError> {
        self.channels.lock().insert(channel.to_owned());
        let subscribed = self
            .run(|mut connection| {
                let channel = channel.to_owned();
                async move { connection.subscribe(channel).await }
            })
            .await;
        if subscribed.is_err() {
            self.channels.lock().remove(channel);
        }
        subscribed
    }

    pub(super) async fn unsubscribe(&self, channel: &str) -> Result<(), StoreError> {
        self.channels.lock().remove(channel);
        self.run(|mut connection| {
            let channel = channel.to_owned();
            async move { connection.unsubscribe(channel).await }
        })
        .await
    }

    /// How long one command may take (`redis.command_timeout_ms`).
    pub fn command_timeout(&self) -> Duration {
        self.settings.command_timeout()
    }

    pub fn key_prefix(&self) -> &str {
        &self.settings.key_prefix
    }
}

fn client_for(url: &str, protocol: ProtocolVersion) -> Result<Client, RedisError> {
    let info = url.into_connection_info()?;
    let redis_settings = info.redis_settings().clone().set_protocol(protocol);
    Client::open(info.set_redis_settings(redis_settings))
}

async fn resolve(target: &Target) -> Result<Client, StoreError> {
    match target {
        Target::Direct(client) => Ok(client.clone()),
        Target::Sentinel(sentinel) => sentinel
            .lock()
            .await
            .async_get_client()
            .await
            .map_err(store_error),
    }
}

async fn manager_for(
    client: Client,
    settings: &RedisSettings,
    push: Option<mpsc::UnboundedSender<redis::PushInfo>>,
) -> Result<ConnectionManager, StoreError> {
    let timeout = settings.command_timeout();
    let mut config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        // Reconnect quickly and keep trying: an outage should heal without a restart.
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2));
    if let Some(push) = push {
        config = config.set_push_sender(push).set_automatic_resubscription();
    }
    with_timeout(timeout, ConnectionManager::new_with_config(client, config))
        .await
        .map_err(store_error)
}

async fn with_timeout<T>(
    timeout: Duration,
    operation: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, RedisError> {
    match tokio::time::timeout(timeout, operation).await {
        Ok(result) => result,
        Err(_) => Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "redis command timed out",
        ))),
    }
}

fn needs_new_master(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || matches!(error.kind(), ErrorKind::Server(ServerErrorKind::ReadOnly))
}
