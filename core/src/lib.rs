//! realtime: a WebSocket realtime server for live notifications, lesson progress, tournaments and
//! match scores.
//!
//! Code map, from the edge inwards:
//!
//! - [`transport`]: the only module that knows salvo: serves the listener; `GET /ws` and the
//!   GraphQL socket on `/graphql` (one WebSocket upgrade for both), `POST /api/publish`,
//!   `/graphql`, `/metrics`, `/health`; maps errors to HTTP statuses once. Each accepted socket sits behind a write lane, through which fan-outs
//!   write pushes without waking the socket's task.
//! - [`session`]: one connection's loop (`select!` over the socket, the socket's wake signal and
//!   one timer); request dispatch, rate limiting, token expiry, heartbeats.
//! - [`protocol`]: the wire types: requests, replies, pushes, error codes, close codes. Frames are
//!   encoded once and shared.
//! - [`node`]: shared state and every operation (join, leave, publish, presence, sweeps), used by
//!   sessions and the HTTP API alike.
//! - [`hub`]: this node's sockets by room and by user; local fan-out, encoded once, through each
//!   socket's write lane (or a bounded queue where there is none).
//! - [`stores`]: the backend traits [`stores::Broker`], [`stores::PresenceStore`],
//!   [`stores::RoomStore`], [`stores::HistoryStore`] and their implementations: in memory
//!   (embedded default), Redis (presence, rooms, Pub/Sub broker, Sentinel; per-socket writes
//!   batched by a coalescer) and NATS (broker; room history in JetStream).
//! - [`nats_bridge`]: inbound publishes from internal services on `realtime.room.*` /
//!   `realtime.user.*`, outbound platform events on `realtime.events.*`.
//! - [`conformance`]: the guarantees of each backend trait as tests (feature `conformance`): one
//!   module per trait, one function (and one named test per backend) per guarantee.
//! - [`notifications`]: notifications stored with sqlx (SQLite or PostgreSQL); created over HTTP
//!   or NATS JetStream ([`notification_ingest`]) and pushed live by the node
//!   (`Node::create_notification`); [`graphql`]: the schema serving them (no HTTP here).
//! - [`plugins`]: wasmtime event plugins: per-room-type chains, limits, failure policy,
//!   circuit breaker, hot reload.
//! - [`presence_diffs`]: joins and leaves gathered per room and pushed as one
//!   `room.presence_diff` per interval (`announce = "batched"`).
//! - [`events`]: platform events (`socket.connect`, `user.offline`, ...) on an in-process bus.
//! - [`auth`]: JWT verification and minting; [`jwks`]: keys from an identity provider's JWKS;
//!   [`room`]: room ids and grants.
//! - [`config`]: typed, layered configuration; [`metrics`]: metric names and the exporter.
//! - [`small_set`]: a few values in a vector, for per-connection and per-user sets.
//! - [`allocator`]: freed memory handed back to the system after many connections end.
//! - [`descriptors`]: the open-file limit and the kernel's descriptor table, sized at startup.
//! - [`admission`]: connection slots per node, per user and per client address.
//! - [`moderation`]: disconnect a user, remove a user from a room (HTTP and NATS requests).
//! - [`readiness`]: what `GET /ready` checks (draining, Redis, NATS, the database).
//! - [`server`]: start and stop a node (readiness off, closes spread over the drain window).
//! - [`trace`]: a service's trace id, carried with its message's work and onto NATS fan-outs.

pub(crate) mod admission;
pub(crate) mod allocator;
pub mod auth;
pub mod config;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod descriptors;
pub mod events;
pub(crate) mod graphql;
pub(crate) mod hub;
pub(crate) mod jwks;
pub mod metrics;
pub(crate) mod moderation;
pub(crate) mod nats_bridge;
pub(crate) mod node;
pub(crate) mod notification_ingest;
pub mod notifications;
pub mod plugins;
pub(crate) mod presence_diffs;
pub mod protocol;
pub(crate) mod readiness;
pub mod room;
pub mod server;
pub(crate) mod session;
pub(crate) mod small_set;
pub mod stores;
pub(crate) mod trace;
mod transport;
