//! Redis backends: presence and room membership shared by every node, and a Pub/Sub broker.
//!
//! Every multi-step change is one Lua script, so it is atomic across nodes, and every script
//! takes "now" from the Redis server's clock (`TIME`), so nodes with skewed clocks agree on
//! expiry. Keys (all under `redis.key_prefix`, default `realtime:`):
//!
//! | key | type | content |
//! | --- | --- | --- |
//! | `presence:expiry` | ZSET | user -> online-until (ms) |
//! | `presence:user:<user>` | HASH | socket -> `<expires ms>\|<node>` |
//! | `room:<room>:sockets` | ZSET | socket -> membership expiry (ms) |
//! | `room:<room>:owner` | HASH | socket -> user |
//! | `room:<room>:users` | HASH | user -> number of the user's sockets in the room |
//! | `ratelimit:<key>` | STRING | hits in the current window (expires with the window) |
//! | channel `fanout:room:<room>` / `fanout:user:<user>` | Pub/Sub | encoded frames (broker) |
//!
//! Keys carry a PEXPIRE of twice the TTL, refreshed on every write, so nothing a dead node
//! left behind outlives it for long. Redis Cluster is not supported (scripts touch keys they
//! derive); use a single master, with Sentinel for failover.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::RwLock;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{
    Client, ErrorKind, IntoConnectionInfo, ProtocolVersion, PushKind, RedisError, Script,
    ServerErrorKind, Value,
};
use tokio::sync::mpsc;

use super::StoreError;
use super::broker::{Broker, DeliveryHandler, Topic, deliver_checked};
use super::coalesce::Coalescer;
use super::presence::{Arrival, PresenceStore, SocketEntry};
use super::rate_limit::{RateDecision, RateLimiter};
use super::rooms::{JoinOutcome, LeaveOutcome, Member, RoomStore};
use crate::config::RedisSettings;
use crate::protocol::Frame;
use crate::room::RoomId;

/// Offline users one sweep takes at most; the next sweep takes the rest.
const OFFLINE_BATCH: usize = 1000;

fn store_error(error: RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {error}"))
}

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

    async fn connect_with(
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
    async fn subscribe(&self, channel: &str) -> Result<(), StoreError> {
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

    async fn unsubscribe(&self, channel: &str) -> Result<(), StoreError> {
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

/// The server's clock in milliseconds, shared by every script.
const NOW_MS: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"#;

/// Connects and heartbeats of several sockets, in order. KEYS: expiry zset, then the user hash
/// of each socket. ARGV: user, socket, node, ttl ms of each socket. Returns, per socket, 1 if its
/// user came online, else 0.
const TOUCH_SCRIPT: &str = r#"
local now = now_ms()
local arrivals = {}
for i = 2, #KEYS do
  local args_before = (i - 2) * 4
  local user, socket, node = ARGV[args_before + 1], ARGV[args_before + 2], ARGV[args_before + 3]
  local ttl = tonumber(ARGV[args_before + 4])
  local expires = now + ttl
  local existed = redis.call('ZSCORE', KEYS[1], user)
  redis.call('HSET', KEYS[i], socket, string.format('%d', expires) .. '|' .. node)
  redis.call('PEXPIRE', KEYS[i], ttl * 2)
  redis.call('ZADD', KEYS[1], 'GT', expires, user)
  arrivals[i - 1] = existed and 0 or 1
end
return arrivals
"#;

/// KEYS: user hash. Returns [socket, node, ...] for live sockets.
const SOCKETS_SCRIPT: &str = r#"
local now = now_ms()
local entries = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #entries, 2 do
  local expires, node = string.match(entries[i + 1], '^(%d+)|(.*)$')
  if expires and tonumber(expires) > now then
    table.insert(live, entries[i])
    table.insert(live, node)
  end
end
return live
"#;

/// KEYS: expiry zset. ARGV: user hash key prefix, batch size. Removes and returns users whose
/// online-until passed and who have no live socket. Atomic: each user is returned once.
const TAKE_OFFLINE_SCRIPT: &str = r#"
local now = now_ms()
local users = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
local gone = {}
for _, user in ipairs(users) do
  local key = ARGV[1] .. user
  local entries = redis.call('HGETALL', key)
  local latest = 0
  for i = 2, #entries, 2 do
    local expires = tonumber(string.match(entries[i], '^(%d+)|'))
    if expires and expires > latest then latest = expires end
  end
  if latest > now then
    redis.call('ZADD', KEYS[1], latest, user)
  else
    redis.call('ZREM', KEYS[1], user)
    redis.call('DEL', key)
    table.insert(gone, user)
  end
end
return gone
"#;

/// Removes expired memberships of one room (KEYS: sockets zset, owner hash, users hash), and
/// keeps a room's three keys (from KEYS[base + 1]) alive.
const PURGE_ROOM: &str = r#"
local function purge(now)
  local expired = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE')
  for _, socket in ipairs(expired) do
    local user = redis.call('HGET', KEYS[2], socket)
    redis.call('ZREM', KEYS[1], socket)
    redis.call('HDEL', KEYS[2], socket)
    if user and redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then
      redis.call('HDEL', KEYS[3], user)
    end
  end
end
local function keep_alive(ttl, base)
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[base + i], ttl * 2) end
end
"#;

/// KEYS: sockets, owner, users. ARGV: socket, user, capacity, ttl ms.
/// Returns 'first', 'joined', 'already' or 'full'.
const JOIN_SCRIPT: &str = r#"
local now = now_ms()
purge(now)
local ttl = tonumber(ARGV[4])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  keep_alive(ttl, 0)
  return 'already'
end
local has_user = redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1
if not has_user and redis.call('HLEN', KEYS[3]) >= tonumber(ARGV[3]) then
  return 'full'
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
keep_alive(ttl, 0)
if has_user then return 'joined' else return 'first' end
"#;

/// Refreshes several memberships. KEYS: sockets, owner, users of each membership's room. ARGV:
/// socket, ttl ms of each membership. Extends live memberships only, and returns the (1-based)
/// positions of those that were gone (expired, or lost with Redis's data).
const REFRESH_SCRIPT: &str = r#"
local now = now_ms()
local gone = {}
for i = 1, #ARGV / 2 do
  local socket, ttl = ARGV[2 * i - 1], tonumber(ARGV[2 * i])
  local base = (i - 1) * 3
  local expires = redis.call('ZSCORE', KEYS[base + 1], socket)
  if expires and tonumber(expires) > now then
    redis.call('ZADD', KEYS[base + 1], now + ttl, socket)
    keep_alive(ttl, base)
  else
    table.insert(gone, i)
  end
end
return gone
"#;

/// KEYS: sockets, owner, users. ARGV: socket. Returns 'last', 'left' or 'none'.
const LEAVE_SCRIPT: &str = r#"
purge(now_ms())
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 'none' end
local user = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if user and redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then
  redis.call('HDEL', KEYS[3], user)
  return 'last'
end
return 'left'
"#;

/// KEYS: sockets, owner, users. Returns the user ids with a live membership.
const MEMBERS_SCRIPT: &str = r#"
purge(now_ms())
return redis.call('HKEYS', KEYS[3])
"#;

fn script(body: &str, helpers: &[&str]) -> Script {
    let mut source = String::new();
    for helper in helpers {
        source.push_str(helper);
    }
    source.push_str(body);
    Script::new(&source)
}

/// Calls one batched write (connects and heartbeats, or membership refreshes) takes at most:
/// Redis runs a script to its end before serving anyone else, so one stays short (128 touches
/// are ~640 commands).
const WRITE_BATCH: usize = 128;

/// Memberships one refresh script extends at most (~5 commands each): a batch of sockets in many
/// rooms is split into several calls, so no single script holds Redis up for long.
const REFRESH_CHUNK: usize = 512;

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
        }
    }

    /// A connect or a heartbeat: both write the same, in the next batched call.
    async fn touch(&self, socket: &SocketEntry, ttl: Duration) -> Result<Arrival, StoreError> {
        let socket = socket.clone();
        self.touches.call(Touch { socket, ttl }).await
    }
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

/// One socket's membership refresh (all its rooms), waiting for a batched write.
struct MembershipRefresh {
    rooms: Vec<RoomId>,
    socket_id: Arc<str>,
    ttl: Duration,
}

/// Room membership in Redis (see the module docs for keys).
///
/// Refreshes go out together, like presence's heartbeats: one script call for every room of
/// every socket whose refresh queued while the previous call was out.
pub struct RedisRoomStore {
    redis: Arc<RedisConnector>,
    join: Script,
    refreshes: Coalescer<MembershipRefresh, Vec<RoomId>>,
    leave: Script,
    members: Script,
}

impl RedisRoomStore {
    /// Call within a tokio runtime: it spawns the task that batches refreshes.
    pub fn new(redis: Arc<RedisConnector>) -> RedisRoomStore {
        let helpers = [NOW_MS, PURGE_ROOM];
        let refresh = Arc::new(script(REFRESH_SCRIPT, &helpers));
        let batch_redis = redis.clone();
        RedisRoomStore {
            join: script(JOIN_SCRIPT, &helpers),
            refreshes: Coalescer::spawn(WRITE_BATCH, redis.command_timeout(), move |refreshes| {
                refresh_all(batch_redis.clone(), refresh.clone(), refreshes)
            }),
            leave: script(LEAVE_SCRIPT, &helpers),
            members: script(MEMBERS_SCRIPT, &helpers),
            redis,
        }
    }

    async fn run_room_script<T: redis::FromRedisValue + Send>(
        &self,
        script: &Script,
        room: &RoomId,
        args: &[String],
    ) -> Result<T, StoreError> {
        let keys = room_keys(&self.redis, room);
        self.redis
            .run(|mut connection| {
                let mut invocation = script.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                for arg in args {
                    invocation.arg(arg);
                }
                async move { invocation.invoke_async(&mut connection).await }
            })
            .await
    }
}

fn room_keys(redis: &RedisConnector, room: &RoomId) -> [String; 3] {
    let prefix = redis.key_prefix();
    ["sockets", "owner", "users"].map(|part| format!("{prefix}room:{room}:{part}"))
}

/// Extends a batch of memberships: one script call per `REFRESH_CHUNK` memberships. Answers, per
/// refresh, the rooms whose membership was gone.
async fn refresh_all(
    redis: Arc<RedisConnector>,
    refresh: Arc<Script>,
    refreshes: Vec<MembershipRefresh>,
) -> Result<Vec<Vec<RoomId>>, StoreError> {
    // (refresh's position in the batch, room) for every membership, in order.
    let memberships: Vec<(usize, &RoomId, &MembershipRefresh)> = refreshes
        .iter()
        .enumerate()
        .flat_map(|(position, refresh)| {
            refresh
                .rooms
                .iter()
                .map(move |room| (position, room, refresh))
        })
        .collect();
    let mut gone = vec![Vec::new(); refreshes.len()];
    for chunk in memberships.chunks(REFRESH_CHUNK) {
        let mut keys = Vec::with_capacity(chunk.len() * 3);
        let mut args = Vec::with_capacity(chunk.len() * 2);
        for (_, room, membership) in chunk {
            keys.extend(room_keys(&redis, room));
            args.push(membership.socket_id.to_string());
            args.push(membership.ttl.as_millis().to_string());
        }
        let gone_positions: Vec<usize> = redis
            .run(|mut connection| {
                let mut invocation = refresh.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                for arg in &args {
                    invocation.arg(arg);
                }
                async move { invocation.invoke_async(&mut connection).await }
            })
            .await?;
        for position in gone_positions {
            if let Some((refresh_position, room, _)) =
                position.checked_sub(1).and_then(|index| chunk.get(index))
            {
                gone[*refresh_position].push((*room).clone());
            }
        }
    }
    Ok(gone)
}

#[async_trait]
impl RoomStore for RedisRoomStore {
    async fn join(
        &self,
        room: &RoomId,
        member: &Member,
        capacity: u32,
        ttl: Duration,
    ) -> Result<JoinOutcome, StoreError> {
        let args = [
            member.socket_id.to_string(),
            member.user_id.to_string(),
            capacity.to_string(),
            ttl.as_millis().to_string(),
        ];
        let outcome: String = self.run_room_script(&self.join, room, &args).await?;
        match outcome.as_str() {
            "first" => Ok(JoinOutcome::Joined {
                first_for_user: true,
            }),
            "joined" => Ok(JoinOutcome::Joined {
                first_for_user: false,
            }),
            "already" => Ok(JoinOutcome::AlreadyMember),
            "full" => Ok(JoinOutcome::Full),
            other => Err(StoreError::Unavailable(format!(
                "redis join script answered {other:?}"
            ))),
        }
    }

    async fn refresh(
        &self,
        rooms: &[RoomId],
        member: &Member,
        ttl: Duration,
    ) -> Result<Vec<RoomId>, StoreError> {
        self.refreshes
            .call(MembershipRefresh {
                rooms: rooms.to_vec(),
                socket_id: member.socket_id.clone(),
                ttl,
            })
            .await
    }

    async fn leave(&self, room: &RoomId, member: &Member) -> Result<LeaveOutcome, StoreError> {
        let outcome: String = self
            .run_room_script(&self.leave, room, &[member.socket_id.to_string()])
            .await?;
        Ok(match outcome.as_str() {
            "last" => LeaveOutcome::Left {
                last_for_user: true,
            },
            "left" => LeaveOutcome::Left {
                last_for_user: false,
            },
            _ => LeaveOutcome::NotMember,
        })
    }

    async fn members(&self, room: &RoomId) -> Result<Vec<String>, StoreError> {
        let mut users: Vec<String> = self.run_room_script(&self.members, room, &[]).await?;
        users.sort();
        Ok(users)
    }
}

/// How often the subscription connection is checked with a PING.
///
/// A connection that only listens never fails a command, so nothing else would notice that the
/// master it listens on died: after a Sentinel failover it would retry the dead address forever
/// while publishes went to the new master, and no member on any node would receive anything.
/// A failed check makes the connector ask Sentinel for the master and subscribe every channel
/// there (or, with a plain `redis.url`, reconnect and resubscribe), so delivery resumes within
/// about this interval of the promotion.
const SUBSCRIPTION_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Checks the subscription connection every [`SUBSCRIPTION_CHECK_INTERVAL`] until the broker is
/// dropped; logs once when it is lost and once when it is back.
fn watch_subscription_connection(subscriptions: &Arc<RedisConnector>) {
    let connector = Arc::downgrade(subscriptions);
    tokio::spawn(async move {
        let mut healthy = true;
        loop {
            tokio::time::sleep(SUBSCRIPTION_CHECK_INTERVAL).await;
            let Some(connector) = connector.upgrade() else {
                return;
            };
            let checked = connector
                .run(|mut connection| async move {
                    redis::cmd("PING")
                        .query_async::<Value>(&mut connection)
                        .await
                })
                .await;
            match (checked, healthy) {
                (Err(error), true) => {
                    tracing::warn!(%error, "redis subscription connection lost; following the master");
                    healthy = false;
                }
                (Ok(_), false) => {
                    tracing::info!("redis subscriptions restored");
                    healthy = true;
                }
                _ => {}
            }
        }
    });
}

/// A broker on Redis Pub/Sub: one RESP3 connection for subscriptions (the client resubscribes
/// by itself after a reconnect) and the command connection for PUBLISH.
pub struct RedisBroker {
    commands: Arc<RedisConnector>,
    subscriptions: Arc<RedisConnector>,
    channel_prefix: String,
    /// Channel name -> topic, to route incoming messages without parsing channel names.
    topics: Arc<RwLock<HashMap<Bytes, Topic>>>,
}

impl RedisBroker {
    pub async fn connect(
        settings: &RedisSettings,
        commands: Arc<RedisConnector>,
        deliver: DeliveryHandler,
    ) -> Result<RedisBroker, StoreError> {
        let (push_sender, mut pushes) = mpsc::unbounded_channel();
        let subscriptions =
            RedisConnector::connect_with(settings, ProtocolVersion::RESP3, Some(push_sender))
                .await?;
        let topics: Arc<RwLock<HashMap<Bytes, Topic>>> = Arc::default();
        let routing = topics.clone();
        // Ends when the subscription connection (and with it the push sender) is dropped.
        tokio::spawn(async move {
            while let Some(push) = pushes.recv().await {
                if push.kind != PushKind::Message {
                    continue;
                }
                if let [Value::BulkString(channel), Value::BulkString(payload)] =
                    push.data.as_slice()
                {
                    let topic = routing.read().get(channel.as_slice()).cloned();
                    if let Some(topic) = topic {
                        deliver_checked(&deliver, &topic, Bytes::copy_from_slice(payload));
                    }
                }
            }
        });
        watch_subscription_connection(&subscriptions);
        Ok(RedisBroker {
            channel_prefix: format!("{}fanout:", settings.key_prefix),
            commands,
            subscriptions,
            topics,
        })
    }

    fn channel(&self, topic: &Topic) -> String {
        match topic {
            Topic::Room(room) => format!("{}room:{room}", self.channel_prefix),
            Topic::User(user) => format!("{}user:{user}", self.channel_prefix),
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, topic: &Topic, frame: Frame) -> Result<(), StoreError> {
        let channel = self.channel(topic);
        self.commands
            .run(|mut connection| {
                let channel = channel.clone();
                let payload = frame.bytes().clone();
                async move {
                    redis::cmd("PUBLISH")
                        .arg(channel)
                        .arg(payload.as_ref())
                        .query_async::<()>(&mut connection)
                        .await
                }
            })
            .await
    }

    async fn subscribe(&self, topic: &Topic) -> Result<(), StoreError> {
        let channel = self.channel(topic);
        self.topics
            .write()
            .insert(Bytes::from(channel.clone().into_bytes()), topic.clone());
        let subscribed = self.subscriptions.subscribe(&channel).await;
        if subscribed.is_err() {
            self.topics.write().remove(channel.as_bytes());
        }
        subscribed
    }

    async fn unsubscribe(&self, topic: &Topic) -> Result<(), StoreError> {
        let channel = self.channel(topic);
        self.topics.write().remove(channel.as_bytes());
        self.subscriptions.unsubscribe(&channel).await
    }
}

/// KEYS: counter. ARGV: limit, window ms. Returns 0 when allowed, else the ms until the window
/// ends.
const RATE_LIMIT_SCRIPT: &str = r#"
local hits = redis.call('INCR', KEYS[1])
if hits == 1 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2])) end
if hits <= tonumber(ARGV[1]) then return 0 end
local remaining = redis.call('PTTL', KEYS[1])
if remaining < 0 then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  remaining = tonumber(ARGV[2])
end
return remaining
"#;

/// Fixed-window counters in Redis, shared by every node.
pub struct RedisRateLimiter {
    redis: Arc<RedisConnector>,
    script: Script,
}

impl RedisRateLimiter {
    pub fn new(redis: Arc<RedisConnector>) -> RedisRateLimiter {
        RedisRateLimiter {
            redis,
            script: Script::new(RATE_LIMIT_SCRIPT),
        }
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn hit(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
    ) -> Result<RateDecision, StoreError> {
        let counter = format!("{}ratelimit:{key}", self.redis.key_prefix());
        let remaining_ms: i64 = self
            .redis
            .run(|mut connection| {
                let mut invocation = self.script.key(&counter);
                invocation.arg(limit).arg(window.as_millis() as u64);
                async move { invocation.invoke_async(&mut connection).await }
            })
            .await?;
        Ok(if remaining_ms <= 0 {
            RateDecision::Allowed
        } else {
            RateDecision::Limited {
                retry_after: Duration::from_millis(remaining_ms as u64),
            }
        })
    }
}
