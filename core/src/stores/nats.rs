//! NATS broker: per-topic subjects carrying encoded frames between nodes.
//!
//! A node subscribes to a room's subject only while it has a local socket in the room (per-room
//! interest), so a node never receives traffic for rooms none of its sockets are in. User topics
//! share one wildcard subscription per node (see [`NatsBroker`] for why).
//! Subjects: `<prefix>.fanout.room.<room id>` and `<prefix>.fanout.user.<user id>` (prefix
//! `nats.subject_prefix`, default `realtime`); a user id with characters a subject cannot carry
//! is hex-encoded behind a `~`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_trait::async_trait;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use super::StoreError;
use super::broker::{Broker, DeliveryHandler, Topic, deliver_checked};
use super::nats_round_trip::ServerRoundTrip;
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
        Topic::Control => format!("{prefix}.fanout.control"),
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
    /// Room topics: one subscription (and forwarding task) each, while a local socket is in
    /// the room.
    rooms: Mutex<HashMap<Topic, JoinHandle<()>>>,
    /// Users with a local socket. User topics share one wildcard subscription per node: a
    /// subscription costs a channel block and a task (about 6 KiB) and there is one user topic
    /// per connected user, while user-targeted events are rare next to room broadcasts. Frames
    /// for users not listed here are dropped before the delivery handler.
    users: Arc<Mutex<HashSet<Arc<str>>>>,
    user_wildcard: Mutex<Option<JoinHandle<()>>>,
    /// Proves a new subscription is live on the server before a join is answered (the
    /// connection's one echo, shared with readiness).
    round_trip: Arc<ServerRoundTrip>,
}

/// The user id a user-topic token stands for (the inverse of [`user_token`]).
pub fn user_from_token(token: &str) -> Option<String> {
    let Some(hex) = token.strip_prefix('~') else {
        return Some(token.to_owned());
    };
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(hex.get(index..index + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

impl NatsBroker {
    pub fn new(
        client: async_nats::Client,
        subject_prefix: &str,
        deliver: DeliveryHandler,
        round_trip: Arc<ServerRoundTrip>,
    ) -> NatsBroker {
        NatsBroker {
            round_trip,
            client,
            subject_prefix: subject_prefix.to_owned(),
            deliver,
            rooms: Mutex::default(),
            users: Arc::default(),
            user_wildcard: Mutex::default(),
        }
    }

    fn ensure_connected(&self) -> Result<(), StoreError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(StoreError::Unavailable(format!("nats is {state}"))),
        }
    }

    /// Subscribes `subject` and waits until the server has the SUB, so a publish from any
    /// other connection after this returns reaches the new subscription.
    async fn subscribe_subject(
        &self,
        subject: String,
    ) -> Result<async_nats::Subscriber, StoreError> {
        self.ensure_connected()?;
        let subscriber = self.client.subscribe(subject).await.map_err(nats_error)?;
        self.wait_for_server_round_trip().await?;
        Ok(subscriber)
    }

    async fn wait_for_server_round_trip(&self) -> Result<(), StoreError> {
        // Bounded so an unresponsive server turns into `unavailable`, not a hung join.
        self.round_trip.wait(Duration::from_secs(3)).await
    }

    /// The node's one subscription to every user topic, made on first need.
    async fn ensure_user_wildcard(&self) -> Result<(), StoreError> {
        if self.user_wildcard.lock().is_some() {
            return Ok(());
        }
        let prefix = format!("{}.fanout.user.", self.subject_prefix);
        let mut subscriber = self.subscribe_subject(format!("{prefix}>")).await?;
        let (deliver, users) = (self.deliver.clone(), self.users.clone());
        let task = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let Some(user) = message
                    .subject
                    .strip_prefix(&prefix)
                    .and_then(user_from_token)
                else {
                    continue;
                };
                let user: Option<Arc<str>> = users.lock().get(user.as_str()).cloned();
                if let Some(user) = user {
                    deliver_checked(&deliver, &Topic::User(user), message.payload);
                }
            }
        });
        if let Some(duplicate) = self.user_wildcard.lock().replace(task) {
            duplicate.abort();
        }
        Ok(())
    }
}

impl Drop for NatsBroker {
    fn drop(&mut self) {
        for (_, task) in self.rooms.lock().drain() {
            task.abort();
        }
        if let Some(task) = self.user_wildcard.lock().take() {
            task.abort();
        }
    }
}

#[async_trait]
impl Broker for NatsBroker {
    async fn publish(&self, topic: &Topic, frame: Frame) -> Result<(), StoreError> {
        // While disconnected the client would queue silently; fail so the caller can say so.
        let started = std::time::Instant::now();
        let published = match self.ensure_connected() {
            Ok(()) => {
                let subject = fanout_subject(&self.subject_prefix, topic);
                // A trace id the event's sender gave goes with it to every node.
                match crate::trace::current() {
                    Some(trace_id) => {
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert(crate::trace::TRACE_ID_HEADER, trace_id.as_ref());
                        self.client
                            .publish_with_headers(subject, headers, frame.into_bytes())
                            .await
                    }
                    None => self.client.publish(subject, frame.into_bytes()).await,
                }
                .map_err(nats_error)
            }
            Err(error) => Err(error),
        };
        crate::metrics::record_backend_call("nats", started, published.is_err());
        published
    }

    async fn subscribe(&self, topic: &Topic) -> Result<(), StoreError> {
        if let Topic::User(user) = topic {
            self.ensure_user_wildcard().await?;
            self.users.lock().insert(user.clone());
            return Ok(());
        }
        if self.rooms.lock().contains_key(topic) {
            return Ok(());
        }
        let mut subscriber = self
            .subscribe_subject(fanout_subject(&self.subject_prefix, topic))
            .await?;
        let deliver = self.deliver.clone();
        let task_topic = topic.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                if let Some(trace_id) = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get(crate::trace::TRACE_ID_HEADER))
                {
                    tracing::debug!(trace_id = trace_id.as_str(), topic = ?task_topic, "fan-out received");
                }
                deliver_checked(&deliver, &task_topic, message.payload);
            }
        });
        if let Some(duplicate) = self.rooms.lock().insert(topic.clone(), task) {
            duplicate.abort();
        }
        Ok(())
    }

    async fn unsubscribe(&self, topic: &Topic) -> Result<(), StoreError> {
        match topic {
            Topic::User(user) => {
                self.users.lock().remove(user);
            }
            // Aborting drops the subscriber, which unsubscribes on the server.
            Topic::Room(_) | Topic::Control => {
                if let Some(task) = self.rooms.lock().remove(topic) {
                    task.abort();
                }
            }
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
