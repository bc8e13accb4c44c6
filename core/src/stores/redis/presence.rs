//! Presence in Redis: who is online, with which sockets on which nodes (see the keys in the
//! module docs of `stores::redis`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::{NOW_MS, RedisConnector, WRITE_BATCH, script};
use crate::stores::StoreError;
use crate::stores::coalesce::Coalescer;
use crate::stores::presence::{Arrival, NodeStatus, PresenceStore, SocketEntry};

/// Offline users one sweep takes at most; the next sweep takes the rest.
const OFFLINE_BATCH: usize = 1000;

/// Connects and heartbeats of several sockets (see the script's header).
const TOUCH_SCRIPT: &str = include_str!("scripts/touch.lua");
/// A user's live sockets.
const SOCKETS_SCRIPT: &str = include_str!("scripts/sockets.lua");
/// A node's status, and forgetting nodes that stopped announcing.
const ANNOUNCE_NODE_SCRIPT: &str = include_str!("scripts/announce_node.lua");
/// The statuses of the nodes still announced.
const NODES_SCRIPT: &str = include_str!("scripts/nodes.lua");
/// Users whose presence ran out, taken once each.
const TAKE_OFFLINE_SCRIPT: &str = include_str!("scripts/take_offline.lua");

/// One socket's connect or heartbeat, waiting for a batched write.
struct Touch {
    socket: SocketEntry,
    ttl: Duration,
}

/// Presence in Redis (see the module docs for keys).
///
/// Connects and heartbeats go out together: one script call carries all those that queued while
/// the previous call was out (10,000 sockets with the default interval refresh ~500 a second).
pub struct RedisPresenceStore {
    redis: Arc<RedisConnector>,
    touches: Coalescer<Touch, Arrival>,
    sockets: Script,
    take_offline: Script,
    announce_node: Script,
    nodes: Script,
}

impl RedisPresenceStore {
    /// Call within a tokio runtime: it spawns the task that batches connects and heartbeats.
    pub fn new(redis: Arc<RedisConnector>) -> RedisPresenceStore {
        let touch = Arc::new(script(TOUCH_SCRIPT, &[NOW_MS]));
        let batch_redis = redis.clone();
        RedisPresenceStore {
            touches: Coalescer::spawn(WRITE_BATCH, redis.command_timeout(), move |touches| {
                touch_all(batch_redis.clone(), touch.clone(), touches)
            }),
            redis,
            sockets: script(SOCKETS_SCRIPT, &[NOW_MS]),
            take_offline: script(TAKE_OFFLINE_SCRIPT, &[NOW_MS]),
            announce_node: script(ANNOUNCE_NODE_SCRIPT, &[NOW_MS]),
            nodes: script(NODES_SCRIPT, &[NOW_MS]),
        }
    }

    /// A connect or a heartbeat: both write the same, in the next batched call.
    async fn touch(&self, socket: &SocketEntry, ttl: Duration) -> Result<Arrival, StoreError> {
        let socket = socket.clone();
        self.touches.call(Touch { socket, ttl }).await
    }
}

/// `nodes` (HASH node -> status JSON) and `nodes:until` (ZSET node -> announced until, ms).
fn node_keys(redis: &RedisConnector) -> [String; 2] {
    let prefix = redis.key_prefix();
    [format!("{prefix}nodes"), format!("{prefix}nodes:until")]
}

fn presence_expiry_key(redis: &RedisConnector) -> String {
    format!("{}presence:expiry", redis.key_prefix())
}

fn presence_user_key_prefix(redis: &RedisConnector) -> String {
    format!("{}presence:user:", redis.key_prefix())
}

fn presence_user_key(redis: &RedisConnector, user_id: &str) -> String {
    format!("{}{user_id}", presence_user_key_prefix(redis))
}

/// Writes a batch of connects and heartbeats with one script call.
async fn touch_all(
    redis: Arc<RedisConnector>,
    touch: Arc<Script>,
    touches: Vec<Touch>,
) -> Result<Vec<Arrival>, StoreError> {
    let expiry = presence_expiry_key(&redis);
    let user_keys: Vec<String> = touches
        .iter()
        .map(|touch| presence_user_key(&redis, &touch.socket.user_id))
        .collect();
    let came_online: Vec<i64> = redis
        .run(|mut connection| {
            let mut invocation = touch.key(&expiry);
            for (touch, user_key) in touches.iter().zip(&user_keys) {
                invocation
                    .key(user_key)
                    .arg(&*touch.socket.user_id)
                    .arg(&*touch.socket.socket_id)
                    .arg(&*touch.socket.node_id)
                    .arg(touch.ttl.as_millis() as u64);
            }
            async move { invocation.invoke_async(&mut connection).await }
        })
        .await?;
    Ok(came_online
        .into_iter()
        .map(|came_online| {
            if came_online == 1 {
                Arrival::CameOnline
            } else {
                Arrival::AlreadyOnline
            }
        })
        .collect())
}

#[async_trait]
impl PresenceStore for RedisPresenceStore {
    async fn connect(&self, socket: &SocketEntry, ttl: Duration) -> Result<Arrival, StoreError> {
        self.touch(socket, ttl).await
    }

    async fn heartbeat(&self, socket: &SocketEntry, ttl: Duration) -> Result<Arrival, StoreError> {
        self.touch(socket, ttl).await
    }

    async fn disconnect(&self, socket: &SocketEntry) -> Result<(), StoreError> {
        let user = presence_user_key(&self.redis, &socket.user_id);
        self.redis
            .run(|mut connection| {
                let user = user.clone();
                let socket_id = socket.socket_id.clone();
                async move {
                    redis::cmd("HDEL")
                        .arg(user)
                        .arg(&*socket_id)
                        .query_async::<()>(&mut connection)
                        .await
                }
            })
            .await
    }

    async fn sockets_of(&self, user_id: &str) -> Result<Vec<SocketEntry>, StoreError> {
        let user = presence_user_key(&self.redis, user_id);
        let flat: Vec<String> = self
            .redis
            .run(|mut connection| {
                let invocation = self.sockets.key(&user);
                async move { invocation.invoke_async(&mut connection).await }
            })
            .await?;
        let user_id: Arc<str> = Arc::from(user_id);
        let mut live: Vec<SocketEntry> = flat
            .chunks_exact(2)
            .map(|pair| SocketEntry {
                user_id: user_id.clone(),
                socket_id: Arc::from(pair[0].as_str()),
                node_id: Arc::from(pair[1].as_str()),
            })
            .collect();
        live.sort_by(|left, right| left.socket_id.cmp(&right.socket_id));
        Ok(live)
    }

    async fn announce_node(&self, status: &NodeStatus, ttl: Duration) -> Result<(), StoreError> {
        let keys = node_keys(&self.redis);
        let json = serde_json::to_string(status)
            .map_err(|error| StoreError::Unavailable(format!("node status: {error}")))?;
        self.redis
            .run(|mut connection| {
                let mut invocation = self.announce_node.prepare_invoke();
                invocation
                    .key(&keys[0])
                    .key(&keys[1])
                    .arg(&status.node_id)
                    .arg(&json)
                    .arg(ttl.as_millis() as u64);
                async move { invocation.invoke_async::<i64>(&mut connection).await }
            })
            .await
            .map(|_| ())
    }

    async fn nodes(&self) -> Result<Vec<NodeStatus>, StoreError> {
        let keys = node_keys(&self.redis);
        let statuses: Vec<String> = self
            .redis
            .run(|mut connection| {
                let mut invocation = self.nodes.prepare_invoke();
                invocation.key(&keys[0]).key(&keys[1]);
                async move { invocation.invoke_async(&mut connection).await }
            })
            .await?;
        let mut nodes: Vec<NodeStatus> = statuses
            .iter()
            .filter_map(|status| serde_json::from_str(status).ok())
            .collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(nodes)
    }

    async fn take_offline(&self) -> Result<Vec<String>, StoreError> {
        let (expiry, prefix) = (
            presence_expiry_key(&self.redis),
            presence_user_key_prefix(&self.redis),
        );
        let mut gone: Vec<String> = self
            .redis
            .run(|mut connection| {
                let mut invocation = self.take_offline.key(&expiry);
                invocation.arg(&prefix).arg(OFFLINE_BATCH);
                async move { invocation.invoke_async(&mut connection).await }
            })
            .await?;
        gone.sort();
        Ok(gone)
    }
}
