//! Plain HTTP endpoints: the publish API, Prometheus metrics and the health check.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use salvo::http::StatusCode;
use salvo::prelude::*;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::render_error;
use crate::metrics as names;
use crate::node::{Delivery, Node, Publisher};
use crate::notifications::{Notification, NotificationRequest, rfc3339_millis};
use crate::protocol::{ErrorCode, WireError};
use crate::room::RoomId;

/// `POST /api/publish` with `X-API-Key`: `{"room"|"user":..,"event":..,"data":..}`.
pub struct PublishEndpoint {
    node: Arc<Node>,
}

impl PublishEndpoint {
    pub fn new(node: Arc<Node>) -> Self {
        PublishEndpoint { node }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    room: Option<String>,
    user: Option<String>,
    event: String,
    data: Box<RawValue>,
}

/// Compares secrets in time independent of where they differ.
fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Checks `X-API-Key` against `api.key` (the API is off without one).
pub(super) fn check_api_key(node: &Node, req: &Request) -> Result<(), WireError> {
    let Some(expected) = node.settings().api.key.as_deref() else {
        return Err(WireError::new(
            ErrorCode::ApiDisabled,
            "the API is off: set api.key",
        ));
    };
    let presented = req
        .headers()
        .get("x-api-key")
        .map(|value| value.as_bytes())
        .unwrap_or_default();
    if constant_time_eq(presented, expected.as_bytes()) {
        Ok(())
    } else {
        Err(WireError::new(
            ErrorCode::Unauthorized,
            "missing or wrong X-API-Key",
        ))
    }
}

/// Checks the key, then reads a JSON body of at most `api.max_body_bytes`.
pub(super) async fn authorized_json_body<T: serde::de::DeserializeOwned>(
    node: &Node,
    req: &mut Request,
) -> Result<T, WireError> {
    check_api_key(node, req)?;
    let limit = node.settings().api.max_body_bytes;
    let payload = super::read_body(node, req, limit)
        .await
        .map_err(|error| match error {
            super::BodyError::TooLarge => WireError::new(
                ErrorCode::PayloadTooLarge,
                format!("body exceeds {limit} bytes (api.max_body_bytes)"),
            ),
            super::BodyError::TooSlow(error) => error,
        })?;
    serde_json::from_slice(payload).map_err(|error| {
        WireError::new(ErrorCode::InvalidRequest, format!("invalid body: {error}"))
    })
}

impl PublishEndpoint {
    async fn publish(&self, req: &mut Request) -> Result<Delivery, WireError> {
        let body: PublishBody = authorized_json_body(&self.node, req).await?;
        match (body.room, body.user) {
            (Some(room), None) => {
                let room = RoomId::parse(&room)
                    .map_err(|error| WireError::new(ErrorCode::InvalidRoomId, error.to_string()))?;
                metrics::counter!(names::PUBLISHES, "source" => "http").increment(1);
                self.node
                    .publish_to_room(&room, &body.event, &body.data, Publisher::Service)
                    .await
            }
            (None, Some(user)) => {
                metrics::counter!(names::PUBLISHES, "source" => "http").increment(1);
                self.node
                    .publish_to_user(&user, &body.event, &body.data)
                    .await
                    .map(|()| Delivery::Delivered)
            }
            _ => Err(WireError::new(
                ErrorCode::InvalidRequest,
                "give exactly one of `room` or `user`",
            )),
        }
    }
}

#[async_trait]
impl Handler for PublishEndpoint {
    async fn handle(
        &self,
        req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        // A trace id the service sent (`Trace-Id`, or W3C `traceparent`) goes with the event to
        // every node, as for NATS publishes.
        let trace_id = ["Trace-Id", "traceparent"]
            .iter()
            .find_map(|name| req.header::<String>(*name))
            .map(|value| Arc::<str>::from(value.as_str()));
        match crate::trace::with_trace_id(trace_id, self.publish(req)).await {
            Ok(delivery) => res.render(Json(delivery.service_reply())),
            Err(error) => render_error(res, &error),
        }
    }
}

/// `POST /api/notifications` with `X-API-Key`: `{"userId","type","content","id"?}`. Answers 201
/// with the stored notification, or 200 with the existing one when the id was already stored.
pub struct NotificationsEndpoint {
    node: Arc<Node>,
}

impl NotificationsEndpoint {
    pub fn new(node: Arc<Node>) -> Self {
        NotificationsEndpoint { node }
    }

    async fn create(&self, req: &mut Request) -> Result<(Notification, bool), WireError> {
        let request: NotificationRequest = authorized_json_body(&self.node, req).await?;
        let new = request.validate(|| {
            format!(
                "api-{:016x}{:016x}",
                rand::random::<u64>(),
                rand::random::<u64>()
            )
        })?;
        self.node.create_notification(&new).await
    }
}

#[async_trait]
impl Handler for NotificationsEndpoint {
    async fn handle(
        &self,
        req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        match self.create(req).await {
            Ok((stored, created)) => {
                res.status_code(if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                });
                let content: serde_json::Value =
                    serde_json::from_str(&stored.content).unwrap_or_default();
                res.render(Json(serde_json::json!({
                    "id": stored.id,
                    "userId": stored.user_id,
                    "type": stored.kind,
                    "content": content,
                    "createdAt": rfc3339_millis(stored.created_at),
                    "readAt": stored.read_at.map(rfc3339_millis),
                })));
            }
            Err(error) => render_error(res, &error),
        }
    }
}

/// `GET /metrics` in the Prometheus text format.
pub struct MetricsEndpoint {
    handle: PrometheusHandle,
    node: Arc<Node>,
}

impl MetricsEndpoint {
    pub fn new(node: Arc<Node>) -> Self {
        MetricsEndpoint {
            handle: crate::metrics::prometheus_handle(),
            node,
        }
    }
}

#[async_trait]
impl Handler for MetricsEndpoint {
    async fn handle(
        &self,
        _req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        // Counted when asked: walking the hub's maps on every join would cost more.
        let hub = self.node.hub();
        metrics::gauge!(names::USERS).set(hub.user_count() as f64);
        metrics::gauge!(names::ROOMS).set(hub.room_count() as f64);
        let (queued, fullest) = hub.outbox_depth();
        metrics::gauge!(names::OUTBOX_FRAMES).set(queued as f64);
        metrics::gauge!(names::OUTBOX_FRAMES_MAX).set(fullest as f64);
        metrics::counter!(names::BROKER_FRAMES_IN).absolute(hub.broker_deliveries());
        if let Some(heap) = crate::allocator::heap_usage() {
            metrics::gauge!(names::ALLOCATOR_BYTES, "state" => "in_use").set(heap.in_use as f64);
            metrics::gauge!(names::ALLOCATOR_BYTES, "state" => "free").set(heap.free as f64);
            metrics::gauge!(names::ALLOCATOR_BYTES, "state" => "mapped").set(heap.mapped as f64);
        }
        res.add_header("content-type", "text/plain; version=0.0.4", true)
            .ok();
        res.render(self.handle.render());
    }
}

/// `GET /health`: liveness, with the node id and its connection count.
pub struct HealthEndpoint {
    node: Arc<Node>,
}

impl HealthEndpoint {
    pub fn new(node: Arc<Node>) -> Self {
        HealthEndpoint { node }
    }
}

#[async_trait]
impl Handler for HealthEndpoint {
    async fn handle(
        &self,
        _req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        res.render(Json(serde_json::json!({
            "status": "ok",
            "node": self.node.node_id(),
            "connections": self.node.hub().connection_count(),
        })));
    }
}

/// `GET /ready`: 200 when the node should get traffic, 503 with what fails (or `draining`).
pub struct ReadyEndpoint {
    node: Arc<Node>,
}

impl ReadyEndpoint {
    pub fn new(node: Arc<Node>) -> Self {
        ReadyEndpoint { node }
    }
}

#[async_trait]
impl Handler for ReadyEndpoint {
    async fn handle(
        &self,
        _req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        let report = self.node.readiness().await;
        if !report.ready {
            res.status_code(StatusCode::SERVICE_UNAVAILABLE);
        }
        res.render(Json(serde_json::json!({
            "status": if report.ready { "ready" } else { "not_ready" },
            "node": self.node.node_id(),
            "draining": report.draining,
            "failing": report.failing,
        })));
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret-longer"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
