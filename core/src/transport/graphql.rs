//! Serving the GraphQL schema: `POST /graphql`, GraphiQL on `GET /graphql`, and subscriptions
//! over WebSocket on `GET /graphql` (`graphql-transport-ws`, or the older `graphql-ws`), whose
//! sockets `graphql_socket` runs.

use std::sync::Arc;

use async_graphql::http::{GraphiQLSource, WebSocketProtocols};
use salvo::http::StatusCode;
use salvo::prelude::*;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::client_address::TrustedProxies;
use super::graphql_socket::GraphqlSocketLimits;
use crate::graphql::{RealtimeSchema, Viewer, build_schema, ensure_error_codes};
use crate::node::{Applicant, Node};
use crate::protocol::{ErrorCode, WireError};

/// Largest GraphQL request body; queries are small, a bigger body is an attack or a mistake.
const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct GraphqlEndpoint {
    node: Arc<Node>,
    schema: RealtimeSchema,
    proxies: Arc<TrustedProxies>,
    /// The same socket settings as `/ws` (frame limits, buffers).
    socket_config: WebSocketConfig,
}

impl GraphqlEndpoint {
    pub fn new(node: Arc<Node>, proxies: Arc<TrustedProxies>) -> Self {
        GraphqlEndpoint {
            schema: build_schema(node.clone()),
            socket_config: super::upgrade::socket_config(node.settings().limits.max_frame_bytes),
            node,
            proxies,
        }
    }

    async fn execute(&self, req: &mut Request, res: &mut Response) {
        let viewer = viewer_for(&self.node, super::bearer_from_header(req).as_deref()).await;
        let request = match super::read_body(&self.node, req, MAX_BODY_BYTES).await {
            Ok(body) => serde_json::from_slice::<async_graphql::Request>(body),
            Err(super::BodyError::TooLarge) => {
                return render_bad_request(res, &format!("body over {MAX_BODY_BYTES} bytes"));
            }
            Err(super::BodyError::TooSlow(error)) => {
                return render_bad_request(res, &error.message);
            }
        };
        let mut request = match request {
            Ok(request) => request.data(viewer),
            Err(error) => {
                return render_bad_request(res, &format!("not a GraphQL request: {error}"));
            }
        };
        let operation = operation_type(&mut request);
        let started = std::time::Instant::now();
        let response = ensure_error_codes(self.schema.execute(request).await);
        metrics::histogram!(crate::metrics::GRAPHQL_SECONDS, "operation" => operation)
            .record(started.elapsed().as_secs_f64());
        res.render(Json(response));
    }

    async fn subscriptions(&self, req: &mut Request, res: &mut Response) {
        let protocol = req
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|value| value.to_str().ok())
            .and_then(|protocols| {
                protocols
                    .split(',')
                    .find_map(|protocol| protocol.trim().parse::<WebSocketProtocols>().ok())
            });
        let Some(protocol) = protocol else {
            let error = WireError::new(
                ErrorCode::InvalidRequest,
                "use the graphql-transport-ws (or graphql-ws) subprotocol",
            );
            return super::render_error(res, &error);
        };
        if self.node.is_draining() {
            let error = WireError::new(
                ErrorCode::Unavailable,
                "this node is shutting down; connect to another node",
            );
            return super::render_error(res, &error);
        }
        // These sockets count toward server.max_connections like /ws ones.
        // A token on the upgrade request is used unless connection_init carries one.
        let upgrade_viewer = viewer_for(&self.node, super::bearer_token(req).as_deref()).await;
        let applicant = Applicant {
            user_id: match &upgrade_viewer {
                Viewer::User(identity) => Some(Arc::from(identity.user_id.as_str())),
                Viewer::Anonymous(_) => None,
            },
            address: self.proxies.client_address(req),
        };
        let permit = match self.node.try_admit(&applicant) {
            Ok(permit) => permit,
            Err(error) => return super::render_error(res, &error),
        };
        let accepted = match super::upgrade::accept(
            req,
            res,
            self.socket_config,
            Some(protocol.sec_websocket_protocol()),
        ) {
            Ok(accepted) => accepted,
            Err(problem) => {
                let error = WireError::new(ErrorCode::InvalidRequest, problem);
                return super::render_error(res, &error);
            }
        };
        let (node, schema) = (self.node.clone(), self.schema.clone());
        let limits = GraphqlSocketLimits::from_node(&node);
        // The 101 goes out when this handler returns; the upgraded stream arrives after that.
        tokio::spawn(async move {
            let Some(socket) = accepted.into_socket().await else {
                return;
            };
            super::graphql_socket::run(
                socket,
                schema,
                protocol,
                node,
                upgrade_viewer,
                limits,
                permit,
            )
            .await;
        });
    }
}

/// `query`, `mutation` or `subscription` (`invalid` when the text does not parse): a label with
/// a bounded set of values, unlike operation names, which clients choose. The request keeps the
/// parsed document, so `execute` does not parse the query a second time.
fn operation_type(request: &mut async_graphql::Request) -> &'static str {
    use async_graphql::parser::types::OperationType;
    let Ok(document) = request.parsed_query() else {
        return "invalid";
    };
    match document
        .operations
        .iter()
        .next()
        .map(|(_, operation)| operation.node.ty)
    {
        Some(OperationType::Query) => "query",
        Some(OperationType::Mutation) => "mutation",
        Some(OperationType::Subscription) => "subscription",
        None => "invalid",
    }
}

/// Who a request is from, given its token (if any).
pub(super) async fn viewer_for(node: &Node, token: Option<&str>) -> Viewer {
    match token {
        None => Viewer::Anonymous("send Authorization: Bearer <token>".to_owned()),
        Some(token) => match node.verify_token(token).await {
            Ok(identity) => Viewer::User(identity),
            Err(error) => Viewer::Anonymous(error.to_string()),
        },
    }
}

/// `{"Authorization":"Bearer .."}`, `{"authorization":".."}` or `{"token":".."}`.
pub(super) fn token_from_init_payload(payload: &serde_json::Value) -> Option<String> {
    let text = ["Authorization", "authorization", "token"]
        .iter()
        .find_map(|key| payload.get(key).and_then(serde_json::Value::as_str))?;
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .unwrap_or(text);
    Some(token.trim().to_owned())
}

fn render_bad_request(res: &mut Response, message: &str) {
    res.status_code(StatusCode::BAD_REQUEST);
    res.render(Json(serde_json::json!({
        "errors": [{ "message": message, "extensions": { "code": "BAD_REQUEST" } }]
    })));
}

#[async_trait]
impl Handler for GraphqlEndpoint {
    async fn handle(
        &self,
        req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        let is_upgrade = req
            .headers()
            .get("upgrade")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.eq_ignore_ascii_case("websocket"));
        if req.method() == salvo::http::Method::POST {
            self.execute(req, res).await;
        } else if is_upgrade {
            self.subscriptions(req, res).await;
        } else {
            let page = GraphiQLSource::build()
                .endpoint("/graphql")
                .subscription_endpoint("/graphql")
                .finish();
            res.render(Text::Html(page));
        }
    }
}
