//! The `PresenceStore` trait: user -> sockets with a heartbeat TTL, and offline detection.

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
    /// The user was already online (another socket, or within the TTL of a previous one).
    AlreadyOnline,
}

/// Presence across all nodes.
///
/// A user is online from the first `connect` until `ttl` after the last `connect` or
/// `heartbeat` of any of their sockets, *and* no socket entry is still live. Guarantees
/// (checked by `conformance::presence`):
/// - `connect` returns `CameOnline` exactly when the user had no record.
/// - `heartbeat` extends the socket's and the user's TTL; if the user's record was already taken
///   as offline, it is recreated and `CameOnline` is returned.
/// - `disconnect` removes the socket; the user stays online until their TTL runs out.
/// - `sockets_of` lists the live (unexpired) sockets of a user.
/// - `take_offline` returns each user whose TTL ran out with no live socket, and removes them:
///   across all nodes calling it concurrently, each such user is returned exactly once.
/// - `nodes` lists, sorted by node id, every node whose latest `announce_node` is younger than
///   the ttl it gave, with that announcement; from any node.
/// - Concurrent `connect`s and `heartbeat`s behave as if made one at a time: of several sockets
///   of a user connecting together, exactly one gets `CameOnline`. (A backend that pays a round
///   trip per call may send concurrent calls as one batch; the Redis one does.)
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    async fn connect(&self, socket: &SocketEntry, ttl: Duration) -> Result<Arrival, StoreError>;
    async fn heartbeat(&self, socket: &SocketEntry, ttl: Duration) -> Result<Arrival, StoreError>;
    async fn disconnect(&self, socket: &SocketEntry) -> Result<(), StoreError>;
    async fn sockets_of(&self, user_id: &str) -> Result<Vec<SocketEntry>, StoreError>;
    async fn take_offline(&self) -> Result<Vec<String>, StoreError>;
    /// Records this node's status, valid for `ttl` (nodes announce themselves periodically).
    async fn announce_node(&self, status: &NodeStatus, ttl: Duration) -> Result<(), StoreError>;
    async fn nodes(&self) -> Result<Vec<NodeStatus>, StoreError>;
}
