//! The platform's NATS interface for internal services.
//!
//! Subjects start with `nats.subject_prefix` (default `realtime`, used in these docs).
//!
//! Inbound: `realtime.room.<room id>` and `realtime.user.<user id>` carrying
//! `{"event":..,"data":..}`. Nodes share them through a queue group, so each message is
//! validated, encoded and handed to the broker by exactly one node, which fans it out to every
//! node with members. A message with a reply subject gets `{"ok":true}` or an error body.
//!
//! Moderation requests: `realtime.api.users.disconnect` and `realtime.api.rooms.remove` with the
//! bodies of the HTTP API (`crate::moderation`), in the same queue group; the reply is the HTTP
//! answer's body (`{"ok":true,..}` or an error body).
//!
//! Outbound: every platform event on `realtime.events.<name>` (for example
//! `realtime.events.user.offline`) with its JSON body.

use std::hash::BuildHasher;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::node::{Delivery, Node, Publisher};
use crate::protocol::{ErrorBody, ErrorCode, WireError};
use crate::room::RoomId;
use crate::stores::StoreError;

/// Inbound room publishes: `<prefix>.room.<room id>`.
fn room_subjects(prefix: &str) -> String {
    format!("{prefix}.room.")
}

/// Inbound user publishes: `<prefix>.user.<user id>`.
fn user_subjects(prefix: &str) -> String {
    format!("{prefix}.user.")
}

/// Moderation requests: `<prefix>.api.users.disconnect`, `<prefix>.api.rooms.remove`.
fn api_subjects(prefix: &str) -> String {
    format!("{prefix}.api.")
}

/// Outbound platform events: `<prefix>.events.<event name>`.
pub fn event_subject(prefix: &str, event_name: &str) -> String {
    format!("{prefix}.events.{event_name}")
}

#[derive(Deserialize)]
struct InboundEvent {
    event: String,
    data: Box<RawValue>,
}

fn invalid(message: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::InvalidRequest, message)
}

/// Validates one inbound message and publishes it through the node.
async fn handle_inbound(node: &Node, subject: &str, payload: &[u8]) -> Result<Delivery, WireError> {
    let inbound: InboundEvent = serde_json::from_slice(payload).map_err(|error| {
        invalid(format!(
            "body must be {{\"event\":..,\"data\":..}}: {error}"
        ))
    })?;
    let prefix = &node.settings().nats.subject_prefix;
    if let Some(room) = subject.strip_prefix(&room_subjects(prefix)) {
        let room = RoomId::parse(room)
            .map_err(|error| WireError::new(ErrorCode::InvalidRoomId, error.to_string()))?;
        metrics::counter!(crate::metrics::PUBLISHES, "source" => "nats").increment(1);
        node.publish_to_room(&room, &inbound.event, &inbound.data, Publisher::Service)
            .await
    } else if let Some(user) = subject.strip_prefix(&user_subjects(prefix)) {
        metrics::counter!(crate::metrics::PUBLISHES, "source" => "nats").increment(1);
        node.publish_to_user(user, &inbound.event, &inbound.data)
            .await
            .map(|()| Delivery::Delivered)
    } else {
        Err(invalid(format!("unexpected subject {subject}")))
    }
}

/// Serves one moderation request; the reply is the same body HTTP answers.
async fn handle_api_request(node: &Node, operation: &str, payload: &[u8]) -> Bytes {
    use crate::moderation::{DisconnectRequest, RemoveRequest, parse_and_apply};
    let answer = match operation {
        "users.disconnect" => parse_and_apply::<DisconnectRequest>(node, payload).await,
        "rooms.remove" => parse_and_apply::<RemoveRequest>(node, payload).await,
        other => Err(invalid(format!("unknown API request `{other}`"))),
    };
    let body = match answer {
        Ok(body) => body,
        Err(error) => {
            metrics::counter!(crate::metrics::ERRORS, "code" => error.code.as_str()).increment(1);
            serde_json::json!({ "ok": false, "error": ErrorBody::from(&error) })
        }
    };
    Bytes::from(body.to_string())
}

fn reply_body(result: &Result<Delivery, WireError>) -> Bytes {
    #[derive(serde::Serialize)]
    struct Failed<'a> {
        ok: bool,
        error: ErrorBody<'a>,
    }
    let body = match result {
        Ok(delivery) => delivery.service_reply().to_string(),
        Err(error) => serde_json::to_string(&Failed {
            ok: false,
            error: ErrorBody::from(error),
        })
        .unwrap_or_default(),
    };
    Bytes::from(body)
}

/// Subscribes to the inbound subjects in the node's queue group and serves them until shutdown.
pub async fn spawn_ingest(
    node: Arc<Node>,
    client: async_nats::Client,
) -> Result<JoinHandle<()>, StoreError> {
    let nats_error =
        |error: async_nats::SubscribeError| StoreError::Unavailable(format!("nats: {error}"));
    let nats = &node.settings().nats;
    let rooms = client
        .queue_subscribe(
            format!("{}>", room_subjects(&nats.subject_prefix)),
            nats.queue_group.clone(),
        )
        .await
        .map_err(nats_error)?;
    let users = client
        .queue_subscribe(
            format!("{}>", user_subjects(&nats.subject_prefix)),
            nats.queue_group.clone(),
        )
        .await
        .map_err(nats_error)?;
    let api = client
        .queue_subscribe(
            format!("{}>", api_subjects(&nats.subject_prefix)),
            nats.queue_group.clone(),
        )
        .await
        .map_err(nats_error)?;
    client
        .flush()
        .await
        .map_err(|error| StoreError::Unavailable(format!("nats: {error}")))?;
    let mut inbound = futures_util::stream::select(futures_util::stream::select(rooms, users), api);
    let lanes = spawn_ingest_lanes(&node, &client);
    let hasher = std::hash::RandomState::new();
    Ok(tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                _ = node.shutdown_token().cancelled() => return,
                message = inbound.next() => match message {
                    Some(message) => message,
                    None => return,
                },
            };
            let lane = hasher.hash_one(message.subject.as_str()) as usize % INGEST_LANES;
            // A full lane waits here, so NATS holds the rest (backpressure, not a growing queue).
            if lanes[lane].send(message).await.is_err() {
                return;
            }
        }
    }))
}

/// Inbound messages are handled by this many tasks; each takes the messages of the subjects that
/// hash to it, in order. One subject's messages (one room's events) keep the order NATS gave
/// them, while a room whose event waits for its history write does not hold up other rooms.
const INGEST_LANES: usize = 16;
/// Messages one lane may have waiting.
const INGEST_LANE_DEPTH: usize = 256;

fn spawn_ingest_lanes(
    node: &Arc<Node>,
    client: &async_nats::Client,
) -> Vec<tokio::sync::mpsc::Sender<async_nats::Message>> {
    let api_prefix = api_subjects(&node.settings().nats.subject_prefix);
    (0..INGEST_LANES)
        .map(|_| {
            let (sender, mut messages) = tokio::sync::mpsc::channel(INGEST_LANE_DEPTH);
            let (node, client, api_prefix) = (node.clone(), client.clone(), api_prefix.clone());
            tokio::spawn(async move {
                while let Some(message) = messages.recv().await {
                    handle_message(&node, &client, &api_prefix, message).await;
                }
            });
            sender
        })
        .collect()
}

/// Handles one inbound message: a moderation request, or a publish into a room or to a user;
/// answers it when it has a reply subject.
async fn handle_message(
    node: &Node,
    client: &async_nats::Client,
    api_prefix: &str,
    message: async_nats::Message,
) {
    if let Some(operation) = message.subject.strip_prefix(api_prefix) {
        let answer = handle_api_request(node, operation, &message.payload).await;
        if let Some(reply) = message.reply
            && let Err(error) = client.publish(reply, answer).await
        {
            tracing::debug!(%error, "could not answer an API request");
        }
        return;
    }
    // A trace id the publishing service gave (header `Trace-Id`, or W3C `traceparent`)
    // follows the message through this node's logs.
    let trace_id = message.headers.as_ref().and_then(|headers| {
        headers
            .get("Trace-Id")
            .or_else(|| headers.get("traceparent"))
            .map(|value| value.as_str().to_owned())
    });
    let span = tracing::debug_span!(
        "nats_inbound",
        subject = %message.subject,
        trace_id = trace_id.as_deref().unwrap_or("")
    );
    let result = crate::trace::with_trace_id(
        trace_id.as_deref().map(Arc::from),
        tracing::Instrument::instrument(
            handle_inbound(node, &message.subject, &message.payload),
            span.clone(),
        ),
    )
    .await;
    span.in_scope(|| tracing::debug!(ok = result.is_ok(), "inbound publish handled"));
    if let Err(error) = &result {
        metrics::counter!(crate::metrics::ERRORS, "code" => error.code.as_str()).increment(1);
        tracing::warn!(subject = %message.subject, code = error.code.as_str(), message = %error.message, "inbound publish refused");
    }
    if let Some(reply) = message.reply
        && let Err(error) = client.publish(reply, reply_body(&result)).await
    {
        tracing::debug!(%error, "could not answer an inbound publish");
    }
}

/// Publishes every platform event to `realtime.events.<name>` until `stop` is cancelled, then
/// sends what is still queued and flushes (so the disconnects of a shutdown are not lost).
pub fn spawn_event_publisher(
    node: &Node,
    client: async_nats::Client,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let outlet = node.events().take_outlet();
    let prefix = node.settings().nats.subject_prefix.clone();
    tokio::spawn(async move {
        let Some(mut events) = outlet else {
            tracing::error!("the platform event outlet is taken: events are not published");
            return;
        };
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => break,
                event = events.recv() => event,
            };
            match event {
                Some(event) => publish_event(&client, &prefix, &event).await,
                None => break,
            }
        }
        while let Ok(event) = events.try_recv() {
            publish_event(&client, &prefix, &event).await;
        }
        if let Err(error) = client.flush().await {
            tracing::warn!(%error, "could not flush platform events");
        }
    })
}

async fn publish_event(
    client: &async_nats::Client,
    prefix: &str,
    event: &crate::events::PlatformEvent,
) {
    let subject = event_subject(prefix, event.name());
    let body = match serde_json::to_vec(event) {
        Ok(body) => body,
        Err(error) => {
            tracing::error!(%error, "platform event does not serialize");
            return;
        }
    };
    if let Err(error) = client.publish(subject, Bytes::from(body)).await {
        tracing::warn!(%error, event = event.name(), "platform event not published");
    }
}
