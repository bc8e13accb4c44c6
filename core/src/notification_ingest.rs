//! Durable ingest of `realtime.notifications.new` through JetStream.
//!
//! The stream (work-queue retention, file storage) keeps every published notification until a
//! node acknowledges it; all nodes pull from one durable consumer, so each message is handled by
//! one node at a time. A message is acknowledged only after its row is committed, and the insert
//! is idempotent on the notification id (a message without an id gets `<stream>-<sequence>`,
//! stable across redeliveries): a node crash or a database outage loses nothing and duplicates
//! nothing.
//!
//! A message that can never be stored (malformed, or refused by the database itself) and one
//! that failed `notifications.max_deliveries` times is moved to the dead-letter stream
//! (`<prefix>.notifications.dead`, with the reason in headers), and only then terminated:
//! operators can inspect and replay it, and it does not come back every second forever.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use crate::node::Node;
use crate::notifications::NotificationRequest;
use crate::protocol::ErrorCode;

/// Name of the durable consumer all nodes share.
const CONSUMER_NAME: &str = "notifications-ingest";
/// Delay before the first redelivery of a message whose insert failed; doubled each time.
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Longest delay between redeliveries.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// How long the dead-letter stream keeps a message.
const DEAD_LETTER_MAX_AGE: Duration = Duration::from_secs(14 * 24 * 3600);
/// Header naming why a message was dead-lettered.
const DEAD_REASON_HEADER: &str = "Realtime-Dead-Reason";
/// Header with how many times the message was delivered before it was given up.
const DEAD_DELIVERIES_HEADER: &str = "Realtime-Deliveries";
/// Pause before re-creating the consumer after NATS went away.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// The subject internal services publish notifications on.
pub fn subject(prefix: &str) -> String {
    format!("{prefix}.notifications.new")
}

/// The subject notifications that were given up are moved to (a stream of its own).
pub fn dead_letter_subject(prefix: &str) -> String {
    format!("{prefix}.notifications.dead")
}

/// The stream name for a subject prefix (stream names cannot contain dots).
pub fn stream_name(prefix: &str) -> String {
    format!(
        "{}_NOTIFICATIONS",
        prefix.to_uppercase().replace(['.', '-'], "_")
    )
}

/// The dead-letter stream's name.
pub fn dead_letter_stream_name(prefix: &str) -> String {
    format!("{}_DEAD", stream_name(prefix))
}

/// Why ingest could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum IngestSetupError {
    /// The server answered, but not its JetStream API: it runs without JetStream.
    #[error(
        "the NATS server has no JetStream, which notification ingest needs: start nats-server \
         with JetStream (`-js`, or `jetstream {{}}` in its configuration), or leave `nats.url` \
         unset to run without NATS ({0})"
    )]
    NoJetStream(String),
    #[error("{0}")]
    Other(String),
}

/// What the ingest loop needs from NATS.
struct Ingest {
    jetstream: jetstream::Context,
    prefix: String,
    ack_wait: Duration,
    max_deliveries: u32,
}

impl Ingest {
    /// Creates the streams and the consumer when missing. Called at startup (fails fast on a
    /// broken JetStream) and again after reconnects.
    async fn consumer(&self) -> Result<consumer::PullConsumer, IngestSetupError> {
        let stream_error = |error: jetstream::context::CreateStreamError| {
            use jetstream::context::CreateStreamErrorKind;
            match error.kind() {
                CreateStreamErrorKind::JetStreamUnavailable | CreateStreamErrorKind::TimedOut => {
                    IngestSetupError::NoJetStream(error.to_string())
                }
                _ => IngestSetupError::Other(format!("jetstream stream: {error}")),
            }
        };
        self.jetstream
            .get_or_create_stream(stream::Config {
                name: dead_letter_stream_name(&self.prefix),
                subjects: vec![dead_letter_subject(&self.prefix)],
                retention: stream::RetentionPolicy::Limits,
                max_age: DEAD_LETTER_MAX_AGE,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(stream_error)?;
        let stream = self
            .jetstream
            .get_or_create_stream(stream::Config {
                name: stream_name(&self.prefix),
                subjects: vec![subject(&self.prefix)],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(stream_error)?;
        stream
            .get_or_create_consumer(
                CONSUMER_NAME,
                consumer::pull::Config {
                    durable_name: Some(CONSUMER_NAME.to_owned()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.ack_wait,
                    // A backstop: the loop dead-letters a message at its last delivery itself.
                    max_deliver: i64::from(self.max_deliveries) + 1,
                    ..Default::default()
                },
            )
            .await
            .map_err(|error| IngestSetupError::Other(format!("jetstream consumer: {error}")))
    }
}

/// Starts the ingest loop. Fails when JetStream cannot be set up at startup.
pub async fn spawn(
    node: Arc<Node>,
    client: async_nats::Client,
) -> Result<JoinHandle<()>, IngestSetupError> {
    let settings = node.settings();
    let ingest = Ingest {
        prefix: settings.nats.subject_prefix.clone(),
        ack_wait: Duration::from_secs(settings.notifications.ack_wait_secs),
        max_deliveries: settings.notifications.max_deliveries,
        jetstream: jetstream::new(client),
    };
    let first = ingest.consumer().await?;
    Ok(tokio::spawn(async move {
        let mut pull = Some(first);
        loop {
            let current = match pull.take() {
                Some(current) => current,
                None => match ingest.consumer().await {
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
            if consume(&node, &ingest, current).await {
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
async fn consume(node: &Node, ingest: &Ingest, pull: consumer::PullConsumer) -> bool {
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
            Some(Ok(message)) => handle(node, ingest, message).await,
            Some(Err(error)) => {
                tracing::warn!(%error, "notification ingest stream failed; re-creating");
                return false;
            }
            None => return false,
        }
    }
}

/// What becomes of one delivery.
enum Outcome {
    Stored,
    /// Try again after this delay.
    Retry(Duration),
    /// Never storable, or out of deliveries: moved to the dead-letter stream, with the reason.
    GiveUp(String),
}

/// The delay before redelivery after `delivered` failed deliveries: 1 s, 2 s, 4 s ... 60 s.
fn retry_delay(delivered: i64) -> Duration {
    let doublings = u32::try_from(delivered.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(16);
    (FIRST_RETRY_DELAY * 2u32.pow(doublings)).min(MAX_RETRY_DELAY)
}

async fn outcome_of(
    node: &Node,
    ingest: &Ingest,
    message: &jetstream::Message,
    delivered: i64,
    fallback_id: String,
) -> Outcome {
    let parsed = serde_json::from_slice::<NotificationRequest>(&message.payload)
        .map_err(|error| error.to_string())
        .and_then(|request| {
            request
                .validate(|| fallback_id)
                .map_err(|error| error.message)
        });
    let new = match parsed {
        Ok(new) => new,
        Err(problem) => {
            metrics::counter!(crate::metrics::ERRORS, "code" => ErrorCode::InvalidRequest.as_str())
                .increment(1);
            return Outcome::GiveUp(format!("malformed: {problem}"));
        }
    };
    match node.create_notification(&new).await {
        Ok(_) => Outcome::Stored,
        Err(error) if error.code == ErrorCode::InvalidRequest => {
            Outcome::GiveUp(format!("refused by the database: {}", error.message))
        }
        Err(error) if delivered >= i64::from(ingest.max_deliveries) => Outcome::GiveUp(format!(
            "not stored after {delivered} deliveries: {}",
            error.message
        )),
        Err(error) => {
            tracing::warn!(message = %error.message, delivered, "notification not stored; will be redelivered");
            Outcome::Retry(retry_delay(delivered))
        }
    }
}

/// Publishes the message to the dead-letter stream and waits for JetStream to store it.
async fn dead_letter(
    ingest: &Ingest,
    message: &jetstream::Message,
    delivered: i64,
    reason: &str,
) -> Result<(), String> {
    let mut headers = async_nats::HeaderMap::new();
    // Header values are one line of text.
    let reason_line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    headers.insert(DEAD_REASON_HEADER, reason_line.as_str());
    headers.insert(DEAD_DELIVERIES_HEADER, delivered.to_string().as_str());
    ingest
        .jetstream
        .publish_with_headers(
            dead_letter_subject(&ingest.prefix),
            headers,
            message.payload.clone(),
        )
        .await
        .map_err(|error| error.to_string())?
        .await
        .map(|_| ())
        .map_err(|error| error.to_string())
}

async fn handle(node: &Node, ingest: &Ingest, message: jetstream::Message) {
    let (fallback_id, delivered, published) = match message.info() {
        Ok(info) => (
            format!("{}-{}", info.stream, info.stream_sequence),
            info.delivered,
            Some(info.published),
        ),
        Err(_) => (format!("nats-{:016x}", rand::random::<u64>()), 1, None),
    };
    let span = tracing::debug_span!("notification_ingest", id = %fallback_id, delivered);
    let outcome = tracing::Instrument::instrument(
        outcome_of(node, ingest, &message, delivered, fallback_id),
        span,
    )
    .await;
    let acknowledgement = match outcome {
        Outcome::Stored => {
            if let Some(published) = published {
                let now_nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|since| since.as_nanos() as i128)
                    .unwrap_or(0);
                let lag_nanos = (now_nanos - published.unix_timestamp_nanos()).max(0);
                metrics::histogram!(crate::metrics::NOTIFICATION_INGEST_LAG_SECONDS)
                    .record(lag_nanos as f64 / 1e9);
            }
            AckKind::Ack
        }
        Outcome::Retry(delay) => AckKind::Nak(Some(delay)),
        Outcome::GiveUp(reason) => match dead_letter(ingest, &message, delivered, &reason).await {
            Ok(()) => {
                tracing::warn!(%reason, subject = %dead_letter_subject(&ingest.prefix), "notification moved to the dead-letter stream");
                metrics::counter!(crate::metrics::NOTIFICATIONS_DEAD_LETTERED).increment(1);
                AckKind::Term
            }
            Err(error) => {
                tracing::warn!(%error, %reason, "dead-lettering failed; the message will be redelivered");
                AckKind::Nak(Some(retry_delay(delivered)))
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
