//! NATS broker: per-topic subjects carrying encoded frames between nodes.
//!
//! A node subscribes to a topic's subject only while it has a local socket interested in it
//! (per-room interest), so a node never receives traffic for rooms none of its sockets are in.
//! Subjects: `<prefix>.fanout.room.<room id>` and `<prefix>.fanout.user.<user id>` (prefix
//! `nats.subject_prefix`, default `realtime`); a user id with characters a subject cannot carry
//! is hex-encoded behind a `~`.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::connection::State;
use async_trait::async_trait;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use super::StoreError;
use super::broker::{Broker, DeliveryHandler, Topic};
use crate::protocol::Frame;

/// Connects to NATS with fast reconnects that never give up: an outage heals by itself.
pub async fn connect(url: &str, node_id: &str) -> Result<async_nats::Client, StoreError> {
    async_nats::ConnectOptions::new()
        .name(format!("realtime-{node_id}"))
        .connection_timeout(Duration::from_secs(3))
        .max_reconnects(None)
        // 100 ms, 200 ms, ... capped at 2 s: quick recovery after a NATS restart.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).min(2_000))
        })
        .event_callback(|event| async move { tracing::info!(%event, "nats connection event") })
        .connect(url)
        .await
        .map_err(|error| StoreError::Unavailable(format!("nats: {error}")))
}

fn subject_safe(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b':')
}

/// A subject token for a user id: the id itself when every byte is safe, else `~<hex>`.
pub fn user_token(user_id: &str) -> String {
    if !user_id.is_empty() && user_id.bytes().all(subject_safe) {
        return user_id.to_owned();
    }
    let mut token = String::with_capacity(1 + user_id.len() * 2);
    token.push('~');
    for byte in user_id.bytes() {
        token.push_str(&format!("{byte:02x}"));
    }
    token
}

/// The fan-out subject of a topic under `prefix`.
pub fn fanout_subject(prefix: &str, topic: &Topic) -> String {
    match topic {
        Topic::Room(room) => format!("{prefix}.fanout.room.{room}"),
        Topic::User(user) => format!("{prefix}.fanout.user.{}", user_token(user)),
    }
}

fn nats_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("nats: {error}"))
}

/// The NATS broker. Each subscription has a task that hands its frames to the delivery handler,
/// so one topic's frames stay in order.
pub struct NatsBroker {
    client: async_nats::Client,
    subject_prefix: String,
    deliver: DeliveryHandler,
    subscriptions: Mutex<HashMap<Topic, JoinHandle<()>>>,
}

impl NatsBroker {
    pub fn new(
        client: async_nats::Client,
        subject_prefix: &str,
        deliver: DeliveryHandler,
    ) -> NatsBroker {
        NatsBroker {
            client,
            subject_prefix: subject_prefix.to_owned(),
            deliver,
            subscriptions: Mutex::default(),
        }
    }

    fn ensure_connected(&self) -> Result<(), StoreError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(StoreError::Unavailable(format!("nats is {state}"))),
        }
    }
}

impl Drop for NatsBroker {
    fn drop(&mut self) {
        for (_, task) in self.subscriptions.lock().drain() {
            task.abort();
        }
    }
}

#[async_trait]
impl Broker for NatsBroker {
    async fn publish(&self, topic: &Topic, frame: Frame) -> Result<(), StoreError> {
        // While disconnected the client would queue silently; fail so the caller can say so.
        self.ensure_connected()?;
        self.client
            .publish(
                fanout_subject(&self.subject_prefix, topic),
                frame.into_bytes(),
            )
            .await
            .map_err(nats_error)
    }

    async fn subscribe(&self, topic: &Topic) -> Result<(), StoreError> {
        if self.subscriptions.lock().contains_key(topic) {
            return Ok(());
        }
        self.ensure_connected()?;
        let mut subscriber = self
            .client
            .subscribe(fanout_subject(&self.subject_prefix, topic))
            .await
            .map_err(nats_error)?;
        // A round trip to the server: after it, the SUB is in place for every later publish.
        self.client.flush().await.map_err(nats_error)?;
        let deliver = self.deliver.clone();
        let task_topic = topic.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                deliver(&task_topic, Frame::from_encoded(message.payload));
            }
        });
        if let Some(duplicate) = self.subscriptions.lock().insert(topic.clone(), task) {
            duplicate.abort();
        }
        Ok(())
    }

    async fn unsubscribe(&self, topic: &Topic) -> Result<(), StoreError> {
        // Aborting drops the subscriber, which unsubscribes on the server.
        if let Some(task) = self.subscriptions.lock().remove(topic) {
            task.abort();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::RoomId;
    use std::sync::Arc;

    #[test]
    fn subjects_keep_safe_ids_and_encode_the_rest() {
        let room = Topic::Room(RoomId::parse("competition:42").unwrap());
        assert_eq!(
            fanout_subject("realtime", &room),
            "realtime.fanout.room.competition:42"
        );
        assert_eq!(
            fanout_subject("realtime", &Topic::User(Arc::from("alice_1"))),
            "realtime.fanout.user.alice_1"
        );
        assert_eq!(
            fanout_subject("rt", &Topic::User(Arc::from("a.b c"))),
            "rt.fanout.user.~612e622063"
        );
    }
}
