//! Plain HTTP endpoints: the publish API, Prometheus metrics and the health check.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use salvo::prelude::*;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::render_error;
use crate::metrics as names;
use crate::node::{Node, Publisher};
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

impl PublishEndpoint {
    fn check_key(&self, req: &Request) -> Result<(), WireError> {
        let Some(expected) = self.node.settings().api.key.as_deref() else {
            return Err(WireError::new(
                ErrorCode::ApiDisabled,
                "the publish API is off: set api.key",
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

    async fn publish(&self, req: &mut Request) -> Result<(), WireError> {
        self.check_key(req)?;
        let limit = self.node.settings().api.max_body_bytes;
        let payload = req.payload_with_max_size(limit).await.map_err(|_| {
            WireError::new(
                ErrorCode::PayloadTooLarge,
                format!("body exceeds {limit} bytes (api.max_body_bytes)"),
            )
        })?;
        let body: PublishBody = serde_json::from_slice(payload).map_err(|error| {
            WireError::new(ErrorCode::InvalidRequest, format!("invalid body: {error}"))
        })?;
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
        match self.publish(req).await {
            Ok(()) => res.render(Json(serde_json::json!({ "ok": true }))),
            Err(error) => render_error(res, &error),
        }
    }
}

/// `GET /metrics` in the Prometheus text format.
pub struct MetricsEndpoint {
    handle: PrometheusHandle,
}

impl MetricsEndpoint {
    pub fn new() -> Self {
        MetricsEndpoint {
            handle: crate::metrics::prometheus_handle(),
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
