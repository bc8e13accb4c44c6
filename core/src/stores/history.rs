//! The `HistoryStore` trait: each room's recent events with their positions, so that a client
//! that reconnects can be given exactly the events it missed (or be told it cannot).
//!
//! A room's events are numbered by `offset`, one more per event, within an `epoch`: an opaque
//! name for one unbroken sequence. Whenever a room's history is lost or reset (every event
//! expired, a node restarted on the memory store, the stream was deleted, an event went out
//! without being stored) the next event starts a new epoch at offset 1, so a client can never
//! mistake a new sequence for the one it knew.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;
use crate::protocol::Frame;
pub use crate::protocol::{MAX_EPOCH_CHARS, Position};
use crate::room::RoomId;

/// A new epoch name: 64 random bits in hex. Random rather than a counter so that two nodes
/// that start a room's sequence at the same moment cannot pick the same name.
pub fn new_epoch() -> Arc<str> {
    Arc::from(format!("{:016x}", rand::random::<u64>()))
}

/// How much history a room type keeps (from `room_types.<type>.history_size` / `_ttl_secs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Most events kept per room.
    pub size: usize,
    /// Events older than this are dropped; `None`: kept until `size` newer ones arrive.
    pub ttl: Option<Duration>,
}

/// The answer to "what happened in the room since this position".
#[derive(Debug)]
pub enum Recovery {
    /// Every event after the position, oldest first (maybe none), and the position of the last.
    Recovered {
        position: Position,
        events: Vec<Frame>,
    },
    /// The position cannot be served (another epoch, older than what is kept, or ahead of the
    /// room): the client must refetch its state. `position` is where the room is now.
    NotRecovered { position: Position },
}

/// Encodes the push for an event once its position is known.
pub type EncodeAt<'a> = &'a (dyn Fn(&Position) -> Frame + Send + Sync);

/// Each room's recent events and positions, shared by every node of a cluster.
///
/// Guarantees every implementation keeps (checked by `conformance::history`, one test each):
/// - **Contiguous offsets.** Within an epoch, appends get offsets 1, 2, 3, ... with no gap and
///   no offset given twice, even when several nodes append to one room at the same moment.
/// - **What was stored is what is replayed.** `since` and `latest` give back the exact frames
///   that `append` returned, in offset order.
/// - **Exact recovery.** `since(p)` for a position in the current epoch whose following events
///   are all still kept answers `Recovered` with exactly the events after `p`; at the room's
///   newest position, with none.
/// - **Honest refusal.** `since(p)` answers `NotRecovered` when `p`'s epoch is not the room's,
///   when an event after `p` is no longer kept (size or age), or when `p` is ahead of the room.
/// - **Bounded.** At most `policy.size` events per room are kept, none older than `policy.ttl`.
/// - **Stable empty rooms.** `position` of a room with no events names an epoch, and an append
///   that follows continues it at offset 1, so a client that joined an empty room can recover
///   its first events.
#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// Assigns the room's next position, stores the frame `encode` makes for it, and returns
    /// both. On `Err` nothing is known to be stored, and the room's next append starts a new
    /// epoch (the caller may deliver the event without a position).
    async fn append(
        &self,
        room: &RoomId,
        policy: &HistoryPolicy,
        encode: EncodeAt<'_>,
    ) -> Result<(Position, Frame), StoreError>;

    /// Where the room is now (its newest offset, 0 when it has none, and its epoch).
    async fn position(&self, room: &RoomId, policy: &HistoryPolicy)
    -> Result<Position, StoreError>;

    /// The events after `since`, if they can all be served (see [`Recovery`]).
    async fn since(
        &self,
        room: &RoomId,
        policy: &HistoryPolicy,
        since: &Position,
    ) -> Result<Recovery, StoreError>;

    /// The room's last `limit` kept events, oldest first, and its position.
    async fn latest(
        &self,
        room: &RoomId,
        policy: &HistoryPolicy,
        limit: usize,
    ) -> Result<(Position, Vec<Frame>), StoreError>;
}
