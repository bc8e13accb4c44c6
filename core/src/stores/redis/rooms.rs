//! Room membership in Redis: who is in which room, with capacity checked atomically across
//! nodes (see the keys in the module docs of `stores::redis`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::{NOW_MS, RedisConnector, WRITE_BATCH, script};
use crate::room::RoomId;
use crate::stores::StoreError;
use crate::stores::coalesce::Coalescer;
use crate::stores::rooms::{JoinOutcome, LeaveOutcome, Member, RoomSocket, RoomStore};

/// `purge(now)` and `keep_alive(ttl, base)`, prepended to the room scripts.
const PURGE_ROOM: &str = include_str!("scripts/purge_room.lua");
const JOIN_SCRIPT: &str = include_str!("scripts/join.lua");
const REFRESH_SCRIPT: &str = include_str!("scripts/refresh.lua");
const LEAVE_SCRIPT: &str = include_str!("scripts/leave.lua");
const MEMBERS_SCRIPT: &str = include_str!("scripts/members.lua");
const BLOCK_SCRIPT: &str = include_str!("scripts/block.lua");
const ROOM_SOCKETS_SCRIPT: &str = include_str!("scripts/room_sockets.lua");
const USER_ROOMS_SCRIPT: &str = include_str!("scripts/user_rooms.lua");

/// Memberships one refresh script extends at most (~5 commands each): a batch of sockets in many
/// rooms is split into several calls, so no single script holds Redis up for long.
const REFRESH_CHUNK: usize = 512;

/// One socket's membership refresh (all its rooms), waiting for a batched write.
struct MembershipRefresh {
    rooms: Vec<RoomId>,
    socket_id: Arc<str>,
    user_id: Arc<str>,
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
    block: Script,
    sockets: Script,
    user_rooms: Script,
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
            block: script(BLOCK_SCRIPT, &[NOW_MS]),
            sockets: script(ROOM_SOCKETS_SCRIPT, &helpers),
            user_rooms: script(USER_ROOMS_SCRIPT, &[NOW_MS]),
            redis,
        }
    }

    async fn run_room_script<T: redis::FromRedisValue + Send>(
        &self,
        script: &Script,
        room: &RoomId,
        args: &[String],
    ) -> Result<T, StoreError> {
        self.run_script_on_keys(script, &room_keys(&self.redis, room), args)
            .await
    }

    async fn run_script_on_keys<T: redis::FromRedisValue + Send>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, StoreError> {
        self.redis
            .run(|mut connection| {
                let mut invocation = script.prepare_invoke();
                for key in keys {
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

/// The room's blocked users: user -> blocked until (ms).
fn blocked_key(redis: &RedisConnector, room: &RoomId) -> String {
    format!("{}room:{room}:blocked", redis.key_prefix())
}

/// The rooms a user holds a membership in: room -> until when one is known to live (ms).
fn user_rooms_key(redis: &RedisConnector, user_id: &str) -> String {
    format!("{}user:{user_id}:rooms", redis.key_prefix())
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
        let mut keys = Vec::with_capacity(chunk.len() * 4);
        let mut args = Vec::with_capacity(chunk.len() * 3);
        for (_, room, membership) in chunk {
            keys.extend(room_keys(&redis, room));
            keys.push(user_rooms_key(&redis, &membership.user_id));
            args.push(membership.socket_id.to_string());
            args.push(membership.ttl.as_millis().to_string());
            args.push(room.to_string());
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
            room.to_string(),
        ];
        let [sockets, owner, users] = room_keys(&self.redis, room);
        let keys = [
            sockets,
            owner,
            users,
            blocked_key(&self.redis, room),
            user_rooms_key(&self.redis, &member.user_id),
        ];
        let outcome: String = self.run_script_on_keys(&self.join, &keys, &args).await?;
        match outcome.as_str() {
            "blocked" => Ok(JoinOutcome::Blocked),
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
                user_id: member.user_id.clone(),
                ttl,
            })
            .await
    }

    async fn leave(&self, room: &RoomId, member: &Member) -> Result<LeaveOutcome, StoreError> {
        let [sockets, owner, users] = room_keys(&self.redis, room);
        let keys = [
            sockets,
            owner,
            users,
            user_rooms_key(&self.redis, &member.user_id),
        ];
        let args = [member.socket_id.to_string(), room.to_string()];
        let outcome: String = self.run_script_on_keys(&self.leave, &keys, &args).await?;
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

    async fn block(
        &self,
        room: &RoomId,
        user_id: &str,
        duration: Duration,
    ) -> Result<(), StoreError> {
        let args = [user_id.to_owned(), duration.as_millis().to_string()];
        self.run_script_on_keys::<i64>(&self.block, &[blocked_key(&self.redis, room)], &args)
            .await
            .map(|_| ())
    }

    async fn sockets(&self, room: &RoomId) -> Result<Vec<RoomSocket>, StoreError> {
        let flat: Vec<String> = self.run_room_script(&self.sockets, room, &[]).await?;
        let mut listed: Vec<RoomSocket> = flat
            .chunks_exact(3)
            .map(|entry| RoomSocket {
                socket_id: entry[0].clone(),
                user_id: entry[1].clone(),
                expires_at_ms: entry[2].parse::<f64>().unwrap_or(0.0) as u64,
            })
            .collect();
        listed.sort_by(|a, b| (&a.user_id, &a.socket_id).cmp(&(&b.user_id, &b.socket_id)));
        Ok(listed)
    }

    async fn rooms_of(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        let key = user_rooms_key(&self.redis, user_id);
        let mut rooms: Vec<String> = self
            .run_script_on_keys(&self.user_rooms, &[key], &[])
            .await?;
        rooms.sort();
        Ok(rooms)
    }

    async fn members(&self, room: &RoomId) -> Result<Vec<String>, StoreError> {
        let mut users: Vec<String> = self.run_room_script(&self.members, room, &[]).await?;
        users.sort();
        Ok(users)
    }
}
