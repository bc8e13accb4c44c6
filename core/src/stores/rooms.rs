//! The `RoomStore` trait: room membership with an atomic capacity check, held under node leases.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;
use super::presence::SocketEntry;
use crate::room::RoomId;

/// A socket in a room, on behalf of a user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    pub user_id: Arc<str>,
    pub socket_id: Arc<str>,
    /// The node holding the socket: the membership lives while that node's lease lives.
    pub node_id: Arc<str>,
}

impl Member {
    /// The membership of a socket as presence knows it: same user, socket and node.
    pub fn of_socket(socket: &SocketEntry) -> Member {
        Member {
            user_id: socket.user_id.clone(),
            socket_id: socket.socket_id.clone(),
            node_id: socket.node_id.clone(),
        }
    }
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

/// One live membership, for room info: whose socket, on which node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSocket {
    pub user_id: String,
    pub socket_id: String,
    pub node_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveOutcome {
    /// Removed. `last_for_user` is true when no other socket of the user remains in the room.
    Left { last_for_user: bool },
    /// This socket was not a member.
    NotMember,
}

/// Room membership across all nodes. Capacity counts distinct users: a user's second socket
/// joins a full room it is already in. A membership is written once, on `join`, and lives until
/// its `leave` or until its node's lease lapses (the leases are the presence store's
/// `announce_node`; the node died, or lost the store): the store hears from a node, not from
/// every member, while nothing changes. Guarantees (checked by `conformance::rooms`):
/// - `join` checks capacity and adds in one atomic step: concurrent joins from any number of
///   nodes never leave more than `capacity` users in a room.
/// - `join`/`leave` report first/last socket of a user exactly as described on the outcomes.
/// - `members` lists distinct user ids, sorted.
/// - `rooms_of` lists, sorted, the rooms where the user holds a live membership on any node:
///   a room appears with the join and goes with the user's last leave there, or with the lease
///   of the node holding the user's sockets there.
/// - Memberships of a node whose lease lapsed are gone: they do not count toward capacity, are
///   not listed, and cannot be left. They do not come back when the node is granted a lease
///   again: the node joins again, capacity checked.
/// - `join` under no live lease of the member's node fails with [`StoreError::NoLease`] and
///   adds nothing.
/// - A user blocked from a room (`block`) gets `Blocked` from `join` until the block ends; other
///   users are not affected.
#[async_trait]
pub trait RoomStore: Send + Sync + 'static {
    async fn join(
        &self,
        room: &RoomId,
        member: &Member,
        capacity: u32,
    ) -> Result<JoinOutcome, StoreError>;
    /// Refuses the user's joins to `room` (`JoinOutcome::Blocked`) for `duration`, on every node.
    async fn block(
        &self,
        room: &RoomId,
        user_id: &str,
        duration: Duration,
    ) -> Result<(), StoreError>;
    async fn leave(&self, room: &RoomId, member: &Member) -> Result<LeaveOutcome, StoreError>;
    /// The rooms where `user_id` holds a live membership, on any node, sorted.
    async fn rooms_of(&self, user_id: &str) -> Result<Vec<String>, StoreError>;
    async fn members(&self, room: &RoomId) -> Result<Vec<String>, StoreError>;
    /// Every live membership of the room, sorted by user then socket.
    async fn sockets(&self, room: &RoomId) -> Result<Vec<RoomSocket>, StoreError>;
}
