//! Durable ingest of `realtime.notifications.new` through JetStream.
//!
//! The stream (work-queue retention, file storage) keeps every published notification until a
//! node acknowledges it; all nodes pull from one durable consumer, so each message is handled by
//! one node at a time. A message is acknowledged only after its row is committed, and the insert
//! is idempotent on the notification id (a message without an id gets `<stream>-<sequence>`,
//! stable across redeliveries): a node crash or a database outage loses nothing and duplicates
//! nothing. Malformed messages are terminated (never redelivered) and logged.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use super::{NotificationRequest, NotificationService};
use crate::node::Node;
use crate::protocol::ErrorCode;

/// Name of the durable consumer all nodes share.
const CONSUMER_NAME: &str = "notifications-ingest";
/// Delay before a message that failed on a database error is redelivered.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// Pause before re-creating the consumer after NATS went away.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// The subject internal services publish notifications on.
pub fn subject(prefix: &str) -> String {
    format!("{prefix}.notifications.new")
}

/// The stream name for a subject prefix (stream names cannot contain dots).
pub fn stream_name(prefix: &str) -> String {
    format!(
        "{}_NOTIFICATIONS",
        prefix.to_uppercase().replace(['.', '-'], "_")
    )
}

/// Creates the stream and consumer when missing. Called at startup (fails fast on a broken
/// JetStream) and again after reconnects.
async fn consumer(
    jetstream: &jetstream::Context,
    prefix: &str,
    ack_wait: Duration,
) -> Result<consumer::PullConsumer, String> {
    let stream = jetstream
        .get_or_create_stream(stream::Config {
            name: stream_name(prefix),
            subjects: vec![subject(prefix)],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|error| format!("jetstream stream: {error}"))?;
    stream
        .get_or_create_consumer(
            CONSUMER_NAME,
            consumer::pull::Config {
                durable_name: Some(CONSUMER_NAME.to_owned()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait,
                ..Default::default()
            },
        )
        .await
        .map_err(|error| format!("jetstream consumer: {error}"))
}

/// Starts the ingest loop. Fails when JetStream cannot be set up at startup.
pub async fn spawn(
    node: Arc<Node>,
    service: Arc<NotificationService>,
    client: async_nats::Client,
) -> Result<JoinHandle<()>, String> {
    let prefix = node.settings().nats.subject_prefix.clone();
    let ack_wait = Duration::from_secs(node.settings().notifications.ack_wait_secs);
    let jetstream = jetstream::new(client);
    let first = consumer(&jetstream, &prefix, ack_wait).await?;
    Ok(tokio::spawn(async move {
        let mut pull = Some(first);
        loop {
            let current = match pull.take() {
                Some(current) => current,
                None => match consumer(&jetstream, &prefix, ack_wait).await {
                    Ok(current) => current,
                    Err(error) => {
                        tracing::warn!(%error, "notification ingest waiting for JetStream");
                        if sleep_or_shutdown(&node, RECONNECT_DELAY).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            if consume(&node, &service, current).await {
                return;
            }
            if sleep_or_shutdown(&node, RECONNECT_DELAY).await {
                return;
            }
        }
    }))
}

/// True when the node is shutting down.
async fn sleep_or_shutdown(node: &Node, delay: Duration) -> bool {
    tokio::select! {
        _ = node.shutdown_token().cancelled() => true,
        _ = tokio::time::sleep(delay) => false,
    }
}

/// Handles messages until the stream fails (returns false) or the node shuts down (true).
async fn consume(node: &Node, service: &NotificationService, pull: consumer::PullConsumer) -> bool {
    let mut messages = match pull.messages().await {
        Ok(messages) => messages,
        Err(error) => {
            tracing::warn!(%error, "notification ingest cannot pull");
            return false;
        }
    };
    loop {
        let next = tokio::select! {
            _ = node.shutdown_token().cancelled() => return true,
            next = messages.next() => next,
        };
        match next {
            Some(Ok(message)) => handle(node, service, message).await,
            Some(Err(error)) => {
                tracing::warn!(%error, "notification ingest stream failed; re-creating");
                return false;
            }
            None => return false,
        }
    }
}

async fn handle(node: &Node, service: &NotificationService, message: jetstream::Message) {
    let fallback_id = match message.info() {
        Ok(info) => format!("{}-{}", info.stream, info.stream_sequence),
        Err(_) => format!("nats-{:016x}", rand::random::<u64>()),
    };
    let parsed = serde_json::from_slice::<NotificationRequest>(&message.payload)
        .map_err(|error| error.to_string())
        .and_then(|request| {
            request
                .validate(|| fallback_id)
                .map_err(|error| error.message)
        });
    let acknowledgement = match parsed {
        Err(problem) => {
            // Redelivering a malformed message can never succeed.
            tracing::warn!(%problem, "malformed notification dropped");
            metrics::counter!(crate::metrics::ERRORS, "code" => ErrorCode::InvalidRequest.as_str())
                .increment(1);
            AckKind::Term
        }
        Ok(new) => match service.create(node, &new).await {
            Ok(_) => AckKind::Ack,
            Err(error) => {
                tracing::warn!(message = %error.message, "notification not stored; will be redelivered");
                AckKind::Nak(Some(RETRY_DELAY))
            }
        },
    };
    // Double ack: wait for the server to record it, so a crash right after cannot redeliver
    // a notification that was acknowledged here.
    let acked = match acknowledgement {
        AckKind::Ack => message.double_ack().await,
        other => message.ack_with(other).await,
    };
    if let Err(error) = acked {
        tracing::warn!(%error, "acknowledgement lost; the message will be redelivered (idempotent)");
    }
}
