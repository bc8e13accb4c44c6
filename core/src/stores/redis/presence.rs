//! Presence in Redis: who is online, with which sockets on which nodes (see the keys in the
//! module docs of `stores::redis`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::{LEASES, NOW_MS, RedisConnector, WRITE_BATCH, run_with_prefix, script};
use crate::stores::StoreError;
use crate::stores::coalesce::Coalescer;
use crate::stores::presence::{Arrival, Lease, NodeStatus, PresenceStore, SocketEntry};

/// Offline users one sweep takes at most; the next sweep takes the rest.
const OFFLINE_BATCH: usize = 1000;

/// Script calls one `take_offline` or `announce_node` makes at most while a dead node is swept
/// (500 registrations per call: 100,000 sockets and memberships); the next one goes on.
const MAX_SWEEP_CALLS: usize = 200;

/// Registers several sockets (see the script's header).
const CONNECT_SCRIPT: &str = include_str!("scripts/connect.lua");
const DISCONNECT_SCRIPT: &str = include_str!("scripts/disconnect.lua");
/// A user's live sockets.
const SOCKETS_SCRIPT: &str = include_str!("scripts/sockets.lua");
/// A node's status and lease.
const ANNOUNCE_NODE_SCRIPT: &str = include_str!("scripts/announce_node.lua");
/// The statuses of the nodes whose lease is live.
const NODES_SCRIPT: &str = include_str!("scripts/nodes.lua");
/// Users with no socket left, taken once each.
const TAKE_OFFLINE_SCRIPT: &str = include_str!("scripts/take_offline.lua");

/// Presence in Redis (see the module docs for keys), under node leases.
///
/// Connects go out together: one script call carries all those that queued while the previous
/// call was out (a node connecting 1,000 sockets a second writes them in a few calls).
pub struct RedisPresenceStore {
    redis: Arc<RedisConnector>,
    /// Sent with every announcement: a process restarted under the same node id (say a pod
    /// with a fixed name) holds another token, so it is granted a fresh lease and what the
    /// crashed process registered is swept, instead of being held forever by the new one.
    process_token: String,
    connects: Coalescer<SocketEntry, Result<Arrival, StoreError>>,
    disconnect: Script,
    sockets: Script,
    take_offline: Script,
    announce_node: Script,
    nodes: Script,
}

impl RedisPresenceStore {
    /// Call within a tokio runtime: it spawns the task that batches connects.
    pub fn new(redis: Arc<RedisConnector>) -> RedisPresenceStore {
        let connect = Arc::new(script(CONNECT_SCRIPT, &[NOW_MS, LEASES]));
        let batch_redis = redis.clone();
        RedisPresenceStore {
            connects: Coalescer::spawn(WRITE_BATCH, redis.command_timeout(), move |sockets| {
                connect_all(batch_redis.clone(), connect.clone(), sockets)
            }),
            disconnect: script(DISCONNECT_SCRIPT, &[NOW_MS, LEASES]),
            sockets: script(SOCKETS_SCRIPT, &[NOW_MS, LEASES]),
            take_offline: script(TAKE_OFFLINE_SCRIPT, &[NOW_MS, LEASES]),
            announce_node: script(ANNOUNCE_NODE_SCRIPT, &[NOW_MS, LEASES]),
            nodes: script(NODES_SCRIPT, &[NOW_MS, LEASES]),
            process_token: format!("{:016x}", rand::random::<u64>()),
            redis,
        }
    }

    /// Runs a lease script with the key prefix and then `args` as its arguments.
    async fn run<T: redis::FromRedisValue + Send>(
        &self,
        script: &Script,
        args: &[&str],
    ) -> Result<T, StoreError> {
        run_with_prefix(&self.redis, script, args).await
    }
}

/// Registers a batch of sockets with one script call.
async fn connect_all(
    redis: Arc<RedisConnector>,
    connect: Arc<Script>,
    sockets: Vec<SocketEntry>,
) -> Result<Vec<Result<Arrival, StoreError>>, StoreError> {
    let mut args: Vec<&str> = Vec::with_capacity(sockets.len() * 3);
    for socket in &sockets {
        args.extend([&*socket.user_id, &*socket.socket_id, &*socket.node_id]);
    }
    let answers: Vec<i64> = run_with_prefix(&redis, &connect, &args).await?;
    Ok(answers
        .into_iter()
        .zip(&sockets)
        .map(|(answer, socket)| match answer {
            1 => Ok(Arrival::CameOnline),
            0 => Ok(Arrival::AlreadyOnline),
            _ => Err(StoreError::NoLease(socket.node_id.to_string())),
        })
        .collect())
}

#[async_trait]
impl PresenceStore for RedisPresenceStore {
    async fn connect(&self, socket: &SocketEntry) -> Result<Arrival, StoreError> {
        self.connects.call(socket.clone()).await?
    }

    async fn disconnect(&self, socket: &SocketEntry, linger: Duration) -> Result<(), StoreError> {
        let linger_ms = linger.as_millis().to_string();
        let args = [
            &*socket.user_id,
            &*socket.socket_id,
            &*socket.node_id,
            &linger_ms,
        ];
        self.run::<i64>(&self.disconnect, &args).await.map(|_| ())
    }

    async fn sockets_of(&self, user_id: &str) -> Result<Vec<SocketEntry>, StoreError> {
        let flat: Vec<String> = self.run(&self.sockets, &[user_id]).await?;
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

    async fn announce_node(&self, status: &NodeStatus, ttl: Duration) -> Result<Lease, StoreError> {
        let json = serde_json::to_string(status)
            .map_err(|error| StoreError::Unavailable(format!("node status: {error}")))?;
        let ttl_ms = ttl.as_millis().to_string();
        let mut answer = String::new();
        // 'sweeping': the node's earlier registrations are removed a bounded slice per call.
        for _ in 0..MAX_SWEEP_CALLS {
            answer = self
                .run(
                    &self.announce_node,
                    &[&status.node_id, &json, &ttl_ms, &self.process_token],
                )
                .await?;
            if answer != "sweeping" {
                break;
            }
        }
        match answer.as_str() {
            "held" => Ok(Lease::Held),
            "granted" => Ok(Lease::Granted),
            _ => Err(StoreError::Unavailable(
                "the node's earlier registrations are still being swept".into(),
            )),
        }
    }

    async fn nodes(&self) -> Result<Vec<NodeStatus>, StoreError> {
        let statuses: Vec<String> = self.run(&self.nodes, &[]).await?;
        let mut nodes: Vec<NodeStatus> = statuses
            .iter()
            .filter_map(|status| serde_json::from_str(status).ok())
            .collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(nodes)
    }

    async fn take_offline(&self) -> Result<Vec<String>, StoreError> {
        let batch = OFFLINE_BATCH.to_string();
        let mut gone = Vec::new();
        // A dead node is swept a bounded slice per call: call again until it is done.
        for _ in 0..MAX_SWEEP_CALLS {
            let mut answer: Vec<String> = self.run(&self.take_offline, &[&batch]).await?;
            let more_to_sweep = !answer.is_empty() && answer.remove(0) == "1";
            gone.append(&mut answer);
            if !more_to_sweep {
                break;
            }
        }
        gone.sort();
        Ok(gone)
    }
}
