//! The HTTP and WebSocket edge: the only module that knows salvo and the wire framing.
//!
//! Routes: `GET /ws` (WebSocket), `POST /api/publish`, `POST /api/notifications`,
//! `POST|GET /graphql` (queries, GraphiQL, subscriptions), `GET /metrics`, `GET /health`.
//! Every error leaves as `{"error":{"code":..,"message":..}}` with a status from [`status_for`].

mod graphql;
mod http;
mod ws;

use std::sync::Arc;

use salvo::http::StatusCode;
use salvo::prelude::*;

use crate::node::Node;
use crate::protocol::{ErrorBody, ErrorCode, WireError};

/// Builds the router for a node.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .push(Router::with_path("ws").get(ws::WebSocketEndpoint::new(node.clone())))
        .push(Router::with_path("api/publish").post(http::PublishEndpoint::new(node.clone())))
        .push(
            Router::with_path("api/notifications")
                .post(http::NotificationsEndpoint::new(node.clone())),
        )
        .push({
            let endpoint = graphql::GraphqlEndpoint::new(node.clone());
            Router::with_path("graphql")
                .get(endpoint.clone())
                .post(endpoint)
        })
        .push(Router::with_path("metrics").get(http::MetricsEndpoint::new()))
        .push(Router::with_path("health").get(http::HealthEndpoint::new(node)))
}

/// The token from `Authorization: Bearer`.
fn bearer_from_header(req: &Request) -> Option<String> {
    let header = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// The token from `?token=` or `Authorization: Bearer`.
fn bearer_token(req: &Request) -> Option<String> {
    req.query::<String>("token")
        .or_else(|| bearer_from_header(req))
}

/// The one mapping from error codes to HTTP statuses.
fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidToken | ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::ApiDisabled | ErrorCode::RoomForbidden | ErrorCode::PublishForbidden => {
            StatusCode::FORBIDDEN
        }
        ErrorCode::NodeFull | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::FrameTooLarge | ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::PluginRejected => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::PluginFailed => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// Writes `{"error":{"code":..,"message":..}}` with the code's status.
fn render_error(res: &mut Response, error: &WireError) {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        error: ErrorBody<'a>,
    }
    metrics::counter!(crate::metrics::ERRORS, "code" => error.code.as_str()).increment(1);
    res.status_code(status_for(error.code));
    res.render(Json(Body {
        error: ErrorBody::from(error),
    }));
}
