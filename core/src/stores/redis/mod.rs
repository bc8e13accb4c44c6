//! Redis backends: presence and room membership shared by every node, a Pub/Sub broker, and
//! rate-limit counters. One file per concern:
//!
//! - [`connector`]: the reconnecting connection that follows Sentinel failovers;
//! - [`presence`], [`rooms`], [`broker`], [`rate_limit`]: one backend trait each;
//! - `scripts/*.lua`: every multi-step change is one Lua script, so it is atomic across nodes,
//!   and every script takes "now" from the Redis server's clock (`TIME`, `now_ms.lua`), so nodes
//!   with skewed clocks agree on expiry.
//!
//! Presence and membership are held under node leases (`scripts/leases.lua`): each node renews
//! its lease every few seconds; a socket or membership is written once, on connect or join,
//! indexed under its node, and removed on disconnect or leave, or with everything else its node
//! registered by the first script that sees the node's lease lapsed. So Redis hears from a node,
//! not from each of its sockets, while nothing changes.
//!
//! Keys (all under `redis.key_prefix`, default `realtime:`):
//!
//! | key | type | content |
//! | --- | --- | --- |
//! | `nodes:until` / `nodes` | ZSET / HASH | node -> lease until (ms) / status JSON |
//! | `nodes:token` | HASH | node -> token of the process holding the lease (random per process) |
//! | `node:<node>:sockets` | HASH | socket -> user: the node's sockets, swept with its lease |
//! | `node:<node>:memberships` | SET | `<socket> <room>`: the node's memberships, swept with its lease |
//! | `presence:online` | ZSET | user -> online until (ms; `+inf` while the user has a socket) |
//! | `presence:sockets:<user>` | HASH | socket -> node |
//! | `room:<room>:owner` | HASH | socket -> user |
//! | `room:<room>:node` | HASH | socket -> node |
//! | `room:<room>:users` | HASH | user -> number of the user's sockets in the room |
//! | `room:<room>:blocked` | HASH | user -> joins refused until (ms), from a moderator's removal |
//! | `user:<user>:joined` | SET | the rooms the user has a membership in |
//! | `ratelimit:<key>` | STRING | hits in the current window (expires with the window) |
//! | channel `fanout:room:<room>` / `fanout:user:<user>` | Pub/Sub | encoded frames (broker) |
//!
//! Nothing here expires by itself: every entry is removed by its node, or swept with its node's
//! lease. Redis Cluster is not supported (scripts touch keys they derive); use a single master,
//! with Sentinel for failover.

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
/// Node leases and the sweep of a lapsed node (`lease_live`, `sweep_lapsed`, ...), prepended to
/// the presence and room scripts after [`NOW_MS`]; they take the key prefix as `ARGV[1]`.
const LEASES: &str = include_str!("scripts/leases.lua");

/// Connects one batched call writes at most: Redis runs a script to its end before serving
/// anyone else, so one stays short (128 connects are ~600 commands).
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

/// Runs a lease script (one with [`LEASES`] prepended): the key prefix, then `args`.
async fn run_with_prefix<T: redis::FromRedisValue + Send>(
    redis: &RedisConnector,
    script: &Script,
    args: &[&str],
) -> Result<T, StoreError> {
    let prefix = redis.key_prefix().to_owned();
    redis
        .run(|mut connection| {
            let mut invocation = script.prepare_invoke();
            invocation.arg(&prefix);
            for arg in args {
                invocation.arg(*arg);
            }
            async move { invocation.invoke_async(&mut connection).await }
        })
        .await
}
