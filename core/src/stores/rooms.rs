//! The `RoomStore` trait: room membership with an atomic capacity check.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;
use crate::room::RoomId;

/// A socket in a room, on behalf of a user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    pub user_id: Arc<str>,
    pub socket_id: Arc<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    /// Added. `first_for_user` is true when no other socket of the user was in the room.
    Joined { first_for_user: bool },
    /// This socket was already a member; nothing changed.
    AlreadyMember,
    /// The room holds `capacity` distinct users and this user is not one of them.
    Full,
    /// A moderator blocked this user's joins to the room for a while (`block`).
    Blocked,
}

/// One live membership, for room info: whose socket, and when its membership runs out (Unix
/// milliseconds; its last refresh was one membership TTL before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSocket {
    pub user_id: String,
    pub socket_id: String,
    pub expires_at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveOutcome {
    /// Removed. `last_for_user` is true when no other socket of the user remains in the room.
    Left { last_for_user: bool },
    /// This socket was not a member.
    NotMember,
}

/// Room membership across all nodes. Capacity counts distinct users: a user's second socket
/// joins a full room it is already in. Guarantees (checked by `conformance::rooms`):
/// - `join` checks capacity and adds in one atomic step: concurrent joins from any number of
///   nodes never leave more than `capacity` users in a room.
/// - `join`/`leave` report first/last socket of a user exactly as described on the outcomes.
/// - `members` lists distinct user ids, sorted.
/// - `rooms_of` lists, sorted, the rooms where the user holds a live membership on any node:
///   a room appears with the join, stays while one of the user's sockets there is refreshed, and
///   goes with the user's last leave or when the memberships expire.
/// - A membership lasts `ttl` after its `join` or last `refresh`. Expired memberships do not
///   count toward capacity and are not listed: the sockets of a node that died stop being
///   refreshed, so they stop holding places after one TTL.
/// - Concurrent `refresh`es each extend their own memberships, and only those (a backend may
///   send them as one batch; the Redis one does).
/// - A user blocked from a room (`block`) gets `Blocked` from `join` until the block ends; other
///   users are not affected.
/// - `refresh` never revives a membership that is gone (expired, left, or lost with the
///   backend's data); it returns those rooms, so the node holding the socket can `join` again,
///   capacity checked, instead of silently holding a place the store no longer counts.
#[async_trait]
pub trait RoomStore: Send + Sync + 'static {
    async fn join(
        &self,
        room: &RoomId,
        member: &Member,
        capacity: u32,
        ttl: Duration,
    ) -> Result<JoinOutcome, StoreError>;
    /// Refuses the user's joins to `room` (`JoinOutcome::Blocked`) for `duration`, on every node.
    async fn block(
        &self,
        room: &RoomId,
        user_id: &str,
        duration: Duration,
    ) -> Result<(), StoreError>;
    /// Extends the socket's memberships in `rooms` by `ttl` (those that still exist) and
    /// returns the rooms of `rooms` where the membership was gone.
    async fn refresh(
        &self,
        rooms: &[RoomId],
        member: &Member,
        ttl: Duration,
    ) -> Result<Vec<RoomId>, StoreError>;
    async fn leave(&self, room: &RoomId, member: &Member) -> Result<LeaveOutcome, StoreError>;
    /// The rooms where `user_id` holds a live membership, on any node, sorted.
    async fn rooms_of(&self, user_id: &str) -> Result<Vec<String>, StoreError>;
    async fn members(&self, room: &RoomId) -> Result<Vec<String>, StoreError>;
    /// Every live membership of the room, sorted by user then socket.
    async fn sockets(&self, room: &RoomId) -> Result<Vec<RoomSocket>, StoreError>;
}
