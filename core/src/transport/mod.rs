//! The HTTP and WebSocket edge: the only module that knows salvo and the wire framing.
//!
//! Routes: `GET /ws` (WebSocket), `POST /api/publish`, `POST /api/notifications`,
//! `POST|GET /graphql` (queries, GraphiQL, subscriptions), `GET /metrics`, `GET /health`
//! (liveness), `GET /ready` (readiness).
//! `/ws`, `/graphql` and `/api/*` admit pages only from `server.allowed_origins` (`origin`).
//! Every error leaves as `{"error":{"code":..,"message":..}}` with a status from [`status_for`].
//! Both WebSocket doors upgrade through `upgrade`: one request check, one socket configuration
//! (frame limits), one mapping of read errors to close codes.

mod client_address;
mod graphql;
mod graphql_socket;
mod http;
mod lane;
mod moderation;
mod origin;
mod upgrade;
mod ws;

pub use client_address::check_proxy_entry;
pub use origin::check_origin_entry;

use std::sync::Arc;
use std::time::Duration;

use salvo::http::StatusCode;
use salvo::prelude::*;
use salvo::server::ServerHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::moderation::{DisconnectRequest, RemoveRequest};
use crate::node::Node;
use crate::protocol::{ErrorBody, ErrorCode, WireError};

/// The running HTTP server of a node.
pub struct HttpServer {
    handle: ServerHandle,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Stops accepting; requests in flight get `grace` to finish.
    pub fn stop_graceful(&self, grace: Duration) {
        self.handle.stop_graceful(grace);
    }

    /// Resolves once the server has stopped.
    pub async fn finished(self) {
        let _ = self.task.await;
    }
}

/// Serves the node's routes on `listener`.
pub fn serve(listener: TcpListener, node: Arc<Node>) -> std::io::Result<HttpServer> {
    disable_nagle_for_accepted_sockets(&listener)?;
    let lanes = Arc::new(lane::Lanes::default());
    let acceptor = lane::LaneAcceptor::new(listener, lanes.clone())?;
    // Open HTTP connections are capped below the descriptor table (sized for max_connections
    // plus SPARE_DESCRIPTORS), so slow or idle clients can never take the descriptors that
    // Redis, NATS and the database connections need; beyond it, connections wait in the backlog.
    let http_connection_cap = node.settings().server.max_connections
        + (crate::descriptors::SPARE_DESCRIPTORS / 2) as usize;
    // Request headers must arrive within `server.request_header_timeout_ms` (salvo's fuse also
    // bounds the TLS/protocol detection read with it), so a client that trickles headers
    // (slowloris) cannot hold a connection.
    let header_timeout = Duration::from_millis(node.settings().server.request_header_timeout_ms);
    let server = salvo::Server::new(acceptor)
        .max_connections(http_connection_cap)
        .fuse_config(salvo::fuse::FuseConfig::default().with_http1_header_timeout(header_timeout));
    let handle = server.handle();
    let task = tokio::spawn(server.serve(router(node, lanes)));
    Ok(HttpServer { handle, task })
}

/// Sets TCP_NODELAY on the listening socket; Linux copies it to every accepted socket (salvo
/// offers no per-connection hook). A push must leave at once: with Nagle's algorithm a small
/// frame waits for the ACK of the previous one, and the client may delay that ACK by up to 40 ms.
fn disable_nagle_for_accepted_sockets(listener: &TcpListener) -> std::io::Result<()> {
    socket2::SockRef::from(listener).set_tcp_nodelay(true)
}

/// Builds the router for a node; `lanes` are the write lanes of its accepted connections.
fn router(node: Arc<Node>, lanes: Arc<lane::Lanes>) -> Router {
    let allowed_origins = Arc::new(origin::AllowedOrigins::new(
        &node.settings().server.allowed_origins,
    ));
    let cors = origin::Cors::new(allowed_origins.clone());
    let proxies = Arc::new(client_address::TrustedProxies::new(
        &node.settings().server.trusted_proxies,
    ));
    Router::new()
        .push(Router::with_path("ws").get(ws::WebSocketEndpoint::new(
            node.clone(),
            lanes,
            allowed_origins,
            proxies.clone(),
        )))
        .push(
            Router::with_path("api/publish")
                .hoop(cors.clone())
                .post(http::PublishEndpoint::new(node.clone()))
                .options(origin::NoContent),
        )
        .push(
            Router::with_path("api/users/disconnect")
                .hoop(cors.clone())
                .post(moderation::ModerationEndpoint::<DisconnectRequest>::new(
                    node.clone(),
                ))
                .options(origin::NoContent),
        )
        .push(
            Router::with_path("api/rooms/remove")
                .hoop(cors.clone())
                .post(moderation::ModerationEndpoint::<RemoveRequest>::new(
                    node.clone(),
                ))
                .options(origin::NoContent),
        )
        .push(
            Router::with_path("api/rooms/info")
                .hoop(cors.clone())
                .get(moderation::InfoEndpoint::new(
                    node.clone(),
                    moderation::InfoAbout::Room,
                ))
                .options(origin::NoContent),
        )
        .push(
            Router::with_path("api/cluster/info")
                .hoop(cors.clone())
                .get(moderation::InfoEndpoint::new(
                    node.clone(),
                    moderation::InfoAbout::Cluster,
                ))
                .options(origin::NoContent),
        )
        .push(
            Router::with_path("api/users/info")
                .hoop(cors.clone())
                .get(moderation::InfoEndpoint::new(
                    node.clone(),
                    moderation::InfoAbout::User,
                ))
                .options(origin::NoContent),
        )
        .push(
            Router::with_path("api/notifications")
                .hoop(cors.clone())
                .post(http::NotificationsEndpoint::new(node.clone()))
                .options(origin::NoContent),
        )
        .push({
            // The hoop also guards the graphql-transport-ws upgrade (a GET with `Origin`).
            let endpoint = graphql::GraphqlEndpoint::new(node.clone(), proxies);
            Router::with_path("graphql")
                .hoop(cors)
                .get(endpoint.clone())
                .post(endpoint)
                .options(origin::NoContent)
        })
        .push(Router::with_path("metrics").get(http::MetricsEndpoint::new(node.clone())))
        .push(Router::with_path("health").get(http::HealthEndpoint::new(node.clone())))
        .push(Router::with_path("ready").get(http::ReadyEndpoint::new(node)))
}

/// Why a request body could not be read.
enum BodyError {
    TooLarge,
    /// It did not arrive within `server.request_body_timeout_ms`.
    TooSlow(WireError),
}

/// Reads a body of at most `limit` bytes within `server.request_body_timeout_ms`: a client that
/// trickles a body must not hold a connection and a task for as long as it likes.
async fn read_body<'a>(
    node: &Node,
    req: &'a mut Request,
    limit: usize,
) -> Result<&'a bytes::Bytes, BodyError> {
    let timeout = Duration::from_millis(node.settings().server.request_body_timeout_ms);
    match tokio::time::timeout(timeout, req.payload_with_max_size(limit)).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(_)) => Err(BodyError::TooLarge),
        Err(_) => Err(BodyError::TooSlow(WireError::new(
            ErrorCode::InvalidRequest,
            format!(
                "the request body did not arrive within {} ms (server.request_body_timeout_ms)",
                timeout.as_millis()
            ),
        ))),
    }
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
        ErrorCode::ApiDisabled
        | ErrorCode::RoomForbidden
        | ErrorCode::PublishForbidden
        | ErrorCode::OriginForbidden => StatusCode::FORBIDDEN,
        ErrorCode::NodeFull | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::FrameTooLarge | ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited | ErrorCode::TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_inherit_tcp_nodelay_from_the_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        disable_nagle_for_accepted_sockets(&listener).unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let ((accepted, _), _client) = tokio::try_join!(listener.accept(), client).unwrap();
        assert!(
            accepted.nodelay().unwrap(),
            "the accepted socket sends at once"
        );
    }
}
