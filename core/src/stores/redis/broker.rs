//! The broker on Redis Pub/Sub, for deployments that run Redis only (`broker = "redis"`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::RwLock;
use redis::{ProtocolVersion, PushKind, Value};
use tokio::sync::mpsc;

use super::RedisConnector;
use crate::config::RedisSettings;
use crate::protocol::Frame;
use crate::stores::StoreError;
use crate::stores::broker::{Broker, DeliveryHandler, Topic, deliver_checked};

/// How often the subscription connection is checked with a PING.
///
/// A connection that only listens never fails a command, so nothing else would notice that the
/// master it listens on died: after a Sentinel failover it would retry the dead address forever
/// while publishes went to the new master, and no member on any node would receive anything.
/// A failed check makes the connector ask Sentinel for the master and subscribe every channel
/// there (or, with a plain `redis.url`, reconnect and resubscribe), so delivery resumes within
/// about this interval of the promotion.
const SUBSCRIPTION_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Checks the subscription connection every [`SUBSCRIPTION_CHECK_INTERVAL`] until the broker is
/// dropped; logs once when it is lost and once when it is back.
fn watch_subscription_connection(subscriptions: &Arc<RedisConnector>) {
    let connector = Arc::downgrade(subscriptions);
    tokio::spawn(async move {
        let mut healthy = true;
        loop {
            tokio::time::sleep(SUBSCRIPTION_CHECK_INTERVAL).await;
            let Some(connector) = connector.upgrade() else {
                return;
            };
            let checked = connector
                .run(|mut connection| async move {
                    redis::cmd("PING")
                        .query_async::<Value>(&mut connection)
                        .await
                })
                .await;
            match (checked, healthy) {
                (Err(error), true) => {
                    tracing::warn!(%error, "redis subscription connection lost; following the master");
                    healthy = false;
                }
                (Ok(_), false) => {
                    tracing::info!("redis subscriptions restored");
                    healthy = true;
                }
                _ => {}
            }
        }
    });
}

/// A broker on Redis Pub/Sub: one RESP3 connection for subscriptions (the client resubscribes
/// by itself after a reconnect) and the command connection for PUBLISH.
pub struct RedisBroker {
    commands: Arc<RedisConnector>,
    subscriptions: Arc<RedisConnector>,
    channel_prefix: String,
    /// Channel name -> topic, to route incoming messages without parsing channel names.
    topics: Arc<RwLock<HashMap<Bytes, Topic>>>,
}

impl RedisBroker {
    pub async fn connect(
        settings: &RedisSettings,
        commands: Arc<RedisConnector>,
        deliver: DeliveryHandler,
    ) -> Result<RedisBroker, StoreError> {
        let (push_sender, mut pushes) = mpsc::unbounded_channel();
        let subscriptions =
            RedisConnector::connect_with(settings, ProtocolVersion::RESP3, Some(push_sender))
                .await?;
        let topics: Arc<RwLock<HashMap<Bytes, Topic>>> = Arc::default();
        let routing = topics.clone();
        // Ends when the subscription connection (and with it the push sender) is dropped.
        tokio::spawn(async move {
            while let Some(push) = pushes.recv().await {
                if push.kind != PushKind::Message {
                    continue;
                }
                if let [Value::BulkString(channel), Value::BulkString(payload)] =
                    push.data.as_slice()
                {
                    let topic = routing.read().get(channel.as_slice()).cloned();
                    if let Some(topic) = topic {
                        deliver_checked(&deliver, &topic, Bytes::copy_from_slice(payload));
                    }
                }
            }
        });
        watch_subscription_connection(&subscriptions);
        Ok(RedisBroker {
            channel_prefix: format!("{}fanout:", settings.key_prefix),
            commands,
            subscriptions,
            topics,
        })
    }

    fn channel(&self, topic: &Topic) -> String {
        match topic {
            Topic::Room(room) => format!("{}room:{room}", self.channel_prefix),
            Topic::User(user) => format!("{}user:{user}", self.channel_prefix),
            Topic::Control => format!("{}control", self.channel_prefix),
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, topic: &Topic, frame: Frame) -> Result<(), StoreError> {
        let channel = self.channel(topic);
        self.commands
            .run(|mut connection| {
                let channel = channel.clone();
                let payload = frame.bytes().clone();
                async move {
                    redis::cmd("PUBLISH")
                        .arg(channel)
                        .arg(payload.as_ref())
                        .query_async::<()>(&mut connection)
                        .await
                }
            })
            .await
    }

    async fn subscribe(&self, topic: &Topic) -> Result<(), StoreError> {
        let channel = self.channel(topic);
        self.topics
            .write()
            .insert(Bytes::from(channel.clone().into_bytes()), topic.clone());
        let subscribed = self.subscriptions.subscribe(&channel).await;
        if subscribed.is_err() {
            self.topics.write().remove(channel.as_bytes());
        }
        subscribed
    }

    async fn unsubscribe(&self, topic: &Topic) -> Result<(), StoreError> {
        let channel = self.channel(topic);
        self.topics.write().remove(channel.as_bytes());
        self.subscriptions.unsubscribe(&channel).await
    }
}
