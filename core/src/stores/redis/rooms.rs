//! Room membership in Redis: who is in which room, with capacity checked atomically across
//! nodes, under node leases (see the keys in the module docs of `stores::redis`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::{LEASES, NOW_MS, RedisConnector, run_with_prefix, script};
use crate::room::RoomId;
use crate::stores::StoreError;
use crate::stores::rooms::{JoinOutcome, LeaveOutcome, Member, RoomSocket, RoomStore};

const JOIN_SCRIPT: &str = include_str!("scripts/join.lua");
const LEAVE_SCRIPT: &str = include_str!("scripts/leave.lua");
const MEMBERS_SCRIPT: &str = include_str!("scripts/members.lua");
const BLOCK_SCRIPT: &str = include_str!("scripts/block.lua");
const ROOM_SOCKETS_SCRIPT: &str = include_str!("scripts/room_sockets.lua");
const USER_ROOMS_SCRIPT: &str = include_str!("scripts/user_rooms.lua");

/// Room membership in Redis (see the module docs for keys), under node leases: a membership is
/// written by its join and removed by its leave or with its node's lease.
pub struct RedisRoomStore {
    redis: Arc<RedisConnector>,
    join: Script,
    leave: Script,
    members: Script,
    block: Script,
    sockets: Script,
    user_rooms: Script,
}

impl RedisRoomStore {
    pub fn new(redis: Arc<RedisConnector>) -> RedisRoomStore {
        let helpers = [NOW_MS, LEASES];
        RedisRoomStore {
            join: script(JOIN_SCRIPT, &helpers),
            leave: script(LEAVE_SCRIPT, &helpers),
            members: script(MEMBERS_SCRIPT, &helpers),
            block: script(BLOCK_SCRIPT, &[NOW_MS]),
            sockets: script(ROOM_SOCKETS_SCRIPT, &helpers),
            user_rooms: script(USER_ROOMS_SCRIPT, &helpers),
            redis,
        }
    }

    async fn run<T: redis::FromRedisValue + Send>(
        &self,
        script: &Script,
        args: &[&str],
    ) -> Result<T, StoreError> {
        run_with_prefix(&self.redis, script, args).await
    }
}

/// The room's blocked users: user -> blocked until (ms).
fn blocked_key(redis: &RedisConnector, room: &RoomId) -> String {
    format!("{}room:{room}:blocked", redis.key_prefix())
}

#[async_trait]
impl RoomStore for RedisRoomStore {
    async fn join(
        &self,
        room: &RoomId,
        member: &Member,
        capacity: u32,
    ) -> Result<JoinOutcome, StoreError> {
        let capacity = capacity.to_string();
        let args = [
            room.as_str(),
            &*member.socket_id,
            &*member.user_id,
            &*member.node_id,
            &capacity,
        ];
        let outcome: String = self.run(&self.join, &args).await?;
        match outcome.as_str() {
            "nolease" => Err(StoreError::NoLease(member.node_id.to_string())),
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

    async fn leave(&self, room: &RoomId, member: &Member) -> Result<LeaveOutcome, StoreError> {
        let outcome: String = self
            .run(&self.leave, &[room.as_str(), &*member.socket_id])
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

    async fn block(
        &self,
        room: &RoomId,
        user_id: &str,
        duration: Duration,
    ) -> Result<(), StoreError> {
        let key = blocked_key(&self.redis, room);
        let duration_ms = duration.as_millis().to_string();
        self.redis
            .run(|mut connection| {
                let mut invocation = self.block.key(&key);
                invocation.arg(user_id).arg(&duration_ms);
                async move { invocation.invoke_async::<i64>(&mut connection).await }
            })
            .await
            .map(|_| ())
    }

    async fn sockets(&self, room: &RoomId) -> Result<Vec<RoomSocket>, StoreError> {
        let flat: Vec<String> = self.run(&self.sockets, &[room.as_str()]).await?;
        let mut listed: Vec<RoomSocket> = flat
            .chunks_exact(3)
            .map(|entry| RoomSocket {
                socket_id: entry[0].clone(),
                user_id: entry[1].clone(),
                node_id: entry[2].clone(),
            })
            .collect();
        listed.sort_by(|a, b| (&a.user_id, &a.socket_id).cmp(&(&b.user_id, &b.socket_id)));
        Ok(listed)
    }

    async fn rooms_of(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        let mut rooms: Vec<String> = self.run(&self.user_rooms, &[user_id]).await?;
        rooms.sort();
        Ok(rooms)
    }

    async fn members(&self, room: &RoomId) -> Result<Vec<String>, StoreError> {
        let mut users: Vec<String> = self.run(&self.members, &[room.as_str()]).await?;
        users.sort();
        Ok(users)
    }
}
