//! Redis backends: presence and room membership shared by every node, a Pub/Sub broker, and
//! rate-limit counters. One file per concern:
//!
//! - [`connector`]: the reconnecting connection that follows Sentinel failovers;
//! - [`presence`], [`rooms`], [`broker`], [`rate_limit`]: one backend trait each;
//! - `scripts/*.lua`: every multi-step change is one Lua script, so it is atomic across nodes,
//!   and every script takes "now" from the Redis server's clock (`TIME`, `now_ms.lua`), so nodes
//!   with skewed clocks agree on expiry.
//!
//! Keys (all under `redis.key_prefix`, default `realtime:`):
//!
//! | key | type | content |
//! | --- | --- | --- |
//! | `presence:expiry` | ZSET | user -> online-until (ms) |
//! | `presence:user:<user>` | HASH | socket -> `<expires ms>\|<node>` |
//! | `room:<room>:sockets` | ZSET | socket -> membership expiry (ms) |
//! | `room:<room>:owner` | HASH | socket -> user |
//! | `room:<room>:users` | HASH | user -> number of the user's sockets in the room |
//! | `room:<room>:blocked` | HASH | user -> joins refused until (ms), from a moderator's removal |
//! | `nodes` / `nodes:until` | HASH / ZSET | node -> status JSON / announced until (ms) |
//! | `ratelimit:<key>` | STRING | hits in the current window (expires with the window) |
//! | channel `fanout:room:<room>` / `fanout:user:<user>` | Pub/Sub | encoded frames (broker) |
//!
//! Keys carry a PEXPIRE of twice the TTL, refreshed on every write, so nothing a dead node
//! left behind outlives it for long. Redis Cluster is not supported (scripts touch keys they
//! derive); use a single master, with Sentinel for failover.

mod broker;
mod connector;
mod presence;
mod rate_limit;
mod rooms;

pub use broker::RedisBroker;
pub use connector::RedisConnector;
pub use presence::RedisPresenceStore;
pub use rate_limit::RedisRateLimiter;
pub use rooms::RedisRoomStore;

use redis::{RedisError, Script};

use super::StoreError;

/// The server's clock in milliseconds (`now_ms()`), prepended to every script that needs it.
const NOW_MS: &str = include_str!("scripts/now_ms.lua");

/// Calls one batched write (connects and heartbeats, or membership refreshes) takes at most:
/// Redis runs a script to its end before serving anyone else, so one stays short (128 touches
/// are ~640 commands).
const WRITE_BATCH: usize = 128;

fn store_error(error: RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {error}"))
}

/// A script from its body and the helper functions it calls (prepended, in order).
fn script(body: &str, helpers: &[&str]) -> Script {
    let mut source = String::new();
    for helper in helpers {
        source.push_str(helper);
    }
    source.push_str(body);
    Script::new(&source)
}
