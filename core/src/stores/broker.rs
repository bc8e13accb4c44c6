//! The `Broker` trait: moves encoded frames for a topic to every node interested in it.

use std::sync::Arc;

use async_trait::async_trait;

use super::StoreError;
use crate::protocol::Frame;
use crate::room::RoomId;

/// What a node subscribes to: a room's events or one user's events.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Room(RoomId),
    User(Arc<str>),
    /// Commands every node acts on (disconnect a user, remove a user from a room): every node
    /// subscribes at startup; its frames are `protocol::ControlCommand`s, never sent to clients.
    Control,
}

/// Called for every frame delivered to this node. It must not block: it only queues frames on
/// local sockets' outboxes.
pub type DeliveryHandler = Arc<dyn Fn(&Topic, Frame) + Send + Sync>;

/// Hands bytes a networked broker received to the handler as a frame. Nodes only publish
/// frames, so bytes that are not text mean something else wrote on our subjects: dropped and
/// logged, never passed on to clients.
pub fn deliver_checked(deliver: &DeliveryHandler, topic: &Topic, payload: bytes::Bytes) {
    match Frame::from_encoded(payload) {
        Ok(frame) => deliver(topic, frame),
        Err(error) => tracing::warn!(?topic, %error, "dropped a fan-out message"),
    }
}

/// Publish/subscribe between nodes.
///
/// Guarantees every implementation keeps (checked by `conformance::broker`):
/// - After `subscribe(topic)` returns `Ok`, every frame later published on `topic` by any node is
///   passed to this node's [`DeliveryHandler`] exactly once, byte for byte.
/// - Frames from one publisher on one topic arrive in publish order.
/// - A node that is not subscribed to a topic receives nothing for it; after `unsubscribe`
///   returns, deliveries for that topic stop.
/// - `subscribe` and `unsubscribe` are idempotent.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    async fn publish(&self, topic: &Topic, frame: Frame) -> Result<(), StoreError>;
    async fn subscribe(&self, topic: &Topic) -> Result<(), StoreError>;
    async fn unsubscribe(&self, topic: &Topic) -> Result<(), StoreError>;
}
