//! Backend interfaces shared by every node: the [`Broker`] (fan-out between nodes), the
//! [`PresenceStore`] (who is online), the [`RoomStore`] (who is in which room) and the
//! [`RateLimiter`] (per-user request budgets) and the [`HistoryStore`] (each room's recent
//! events, for recovery after a reconnect; in memory or on JetStream, `history_jetstream`).
//!
//! Each is a narrow trait with stated guarantees, held as `Arc<dyn ...>`. The in-memory
//! implementations in [`memory`] are the embedded default for a single node; every backend runs
//! the same conformance suite (`crate::conformance`). `coalesce` batches the calls of a backend
//! that pays a round trip per call (the Redis presence and room stores use it).

pub mod broker;
mod coalesce;
pub mod history;
pub mod history_jetstream;
pub mod memory;
pub mod nats;
pub mod nats_round_trip;
pub mod presence;
pub mod rate_limit;
pub mod redis;
pub mod rooms;

pub use broker::{Broker, DeliveryHandler, Topic};
pub use history::{HistoryPolicy, HistoryStore, Position, Recovery};
pub use presence::{Arrival, Lease, NodeStatus, PresenceStore, SocketEntry};
pub use rate_limit::{RateDecision, RateLimiter};
pub use rooms::{JoinOutcome, LeaveOutcome, Member, RoomSocket, RoomStore};

/// A backend could not do what was asked. Clients see `unavailable`; details go to the log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// A socket or membership was to be registered under its node's lease, and the node holds
    /// none (it lapsed, or the node has not announced itself yet). The node registers it again
    /// when its next announcement is granted a lease.
    #[error("node {0} holds no lease")]
    NoLease(String),
}
