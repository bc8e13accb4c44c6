//! End-to-end tests: the real server on port 0, real WebSocket and HTTP clients.

mod backends;
mod browser_path;
mod cluster;
mod faults;
mod handshake;
mod history;
mod jwks;
mod lifecycle;
mod malformed;
mod monitoring;
mod notifications;
mod presence_diffs;
mod publish;
mod rooms;
mod wasm_plugins;
