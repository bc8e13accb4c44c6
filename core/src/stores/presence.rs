//! The `PresenceStore` trait: user -> sockets held under node leases, and offline detection.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;

/// One connected socket as presence sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SocketEntry {
    pub user_id: Arc<str>,
    pub socket_id: Arc<str>,
    pub node_id: Arc<str>,
}

/// A node's announcement of itself, for cluster info.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    pub node_id: String,
    pub connections: u64,
    pub version: String,
    /// Unix ms of the announcement.
    pub announced_at_ms: u64,
}

/// Whether a socket's arrival brought its user online.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The user had no presence record: emit `user.online`.
    CameOnline,
    /// The user was already online (another socket, or within the linger of a closed one).
    AlreadyOnline,
}

/// What a node's announcement found of its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// The node's lease was live and is renewed: everything it registered is still held.
    Held,
    /// The node held no live lease (its first announcement, or the lease lapsed: the node was
    /// silent past the ttl it gave, or the store lost its data). It holds one now, and nothing
    /// it registered before is held any more: it registers its sockets and memberships again.
    Granted,
}

/// Presence across all nodes, kept by node leases rather than by every socket's heartbeat.
///
/// Each node renews a lease with `announce_node` every few seconds; a socket is registered once
/// (`connect`) and lives in the store while its node's lease lives, until its `disconnect`.
/// The node keeps its sockets honest itself (it closes a socket silent for the presence TTL),
/// so the store hears from a node, not from every socket, while nothing changes: the cost of
/// holding 100,000 sockets is a few writes per node per lease period. Guarantees (checked by
/// `conformance::presence`):
/// - `connect` registers the socket under its node's live lease and returns `CameOnline`
///   exactly when the user had no record; under no live lease it fails with
///   [`StoreError::NoLease`] and registers nothing.
/// - `disconnect` removes the socket; after the user's last socket the user stays online for
///   `linger` (a reconnect within it is no arrival).
/// - `sockets_of` lists the user's sockets registered under live leases.
/// - A node's lease lapses `ttl` after its last `announce_node`; its sockets are then gone:
///   not listed, and their users (with no other socket) go offline at once.
/// - `announce_node` answers `Lease::Granted` when the node held no live lease, and then
///   nothing it registered before is held; `Lease::Held` otherwise. (The Redis store also
///   grants afresh, sweeping the old registrations, when the live lease was taken by another
///   process under the same node id: a node restarted with a fixed id.)
/// - `take_offline` returns each user with no socket under a live lease and no linger left,
///   and removes them: across all nodes calling it concurrently, each such user is returned
///   exactly once.
/// - `nodes` lists, sorted by node id, every node whose lease is live, with its latest status;
///   from any node.
/// - Concurrent `connect`s behave as if made one at a time: of several sockets of a user
///   connecting together, exactly one gets `CameOnline`. (A backend that pays a round trip per
///   call may send concurrent calls as one batch; the Redis one does.)
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    async fn connect(&self, socket: &SocketEntry) -> Result<Arrival, StoreError>;
    async fn disconnect(&self, socket: &SocketEntry, linger: Duration) -> Result<(), StoreError>;
    async fn sockets_of(&self, user_id: &str) -> Result<Vec<SocketEntry>, StoreError>;
    async fn take_offline(&self) -> Result<Vec<String>, StoreError>;
    /// Records this node's status and renews its lease for `ttl` (nodes announce themselves
    /// every third of it).
    async fn announce_node(&self, status: &NodeStatus, ttl: Duration) -> Result<Lease, StoreError>;
    async fn nodes(&self) -> Result<Vec<NodeStatus>, StoreError>;
}
