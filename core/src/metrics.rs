//! Metric names and the Prometheus recorder behind `/metrics`.
//!
//! Names are constants so dashboards and code agree. The recorder is process-global (the
//! `metrics` facade allows one), installed on first use.

use std::sync::OnceLock;

use metrics::Counter;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Gauge: open WebSocket connections on this node.
pub const CONNECTIONS: &str = "realtime_connections";
/// Gauge: distinct users with a socket on this node (set when `/metrics` is read).
pub const USERS: &str = "realtime_users";
/// Gauge: rooms with a member on this node (set when `/metrics` is read).
pub const ROOMS: &str = "realtime_rooms";
/// Gauge: frames waiting in the outboxes of this node's sockets, all together (set when
/// `/metrics` is read). Growing: clients read slower than events arrive.
pub const OUTBOX_FRAMES: &str = "realtime_outbox_frames";
/// Gauge: frames waiting in the fullest outbox of this node (set when `/metrics` is read); at
/// `limits.outbox_frames` the socket is closed as a slow consumer.
pub const OUTBOX_FRAMES_MAX: &str = "realtime_outbox_frames_max";
/// Histogram: seconds from an event's acceptance (its `ts`, on the publishing node's clock, in
/// milliseconds) to this node handing it to its sockets (written, or queued where it could not
/// be written at once); once per fan-out per node. Across nodes it includes clock skew.
pub const PUBLISH_TO_WRITE_SECONDS: &str = "realtime_publish_to_write_seconds";
/// Gauge: `server.max_connections` of this node, for capacity alerts.
pub const MAX_CONNECTIONS: &str = "realtime_max_connections";
/// Gauge, always 1: the running build, label `version`.
pub const BUILD_INFO: &str = "realtime_build_info";
/// Histogram: seconds to answer one socket request, label `op` (join, leave, publish, presence,
/// heartbeat, refresh), backend calls included.
pub const REQUEST_SECONDS: &str = "realtime_request_duration_seconds";
/// Histogram: seconds one backend call took, label `backend` (redis, nats, database).
pub const BACKEND_SECONDS: &str = "realtime_backend_duration_seconds";
/// Counter: backend calls that failed (unreachable, timed out, refused), label `backend`.
pub const BACKEND_ERRORS: &str = "realtime_backend_errors_total";
/// Histogram: seconds to answer one GraphQL request over HTTP, label `operation` (`query`,
/// `mutation`, `subscription`, `invalid`): resolvers and their database calls included.
pub const GRAPHQL_SECONDS: &str = "realtime_graphql_duration_seconds";

/// Records one backend call: its duration, and an error when it failed.
pub fn record_backend_call(backend: &'static str, started: std::time::Instant, failed: bool) {
    metrics::histogram!(BACKEND_SECONDS, "backend" => backend)
        .record(started.elapsed().as_secs_f64());
    if failed {
        metrics::counter!(BACKEND_ERRORS, "backend" => backend).increment(1);
    }
}

/// Histogram: seconds from a notification's arrival in JetStream to its row being committed.
pub const NOTIFICATION_INGEST_LAG_SECONDS: &str = "realtime_notification_ingest_lag_seconds";
/// Counter: connection state transitions, label `state` (connecting, authenticated, connected,
/// disconnected, rejected).
pub const CONNECTION_STATES: &str = "realtime_connection_states_total";
/// Counter: handshakes by `result` (ok, invalid_token, node_full).
pub const HANDSHAKES: &str = "realtime_handshakes_total";
/// Histogram: seconds from the upgrade request to the `connected` frame being written.
pub const HANDSHAKE_SECONDS: &str = "realtime_handshake_duration_seconds";
/// Counter: frames received from clients, label `kind` (the op, or `invalid`).
pub const MESSAGES_IN: &str = "realtime_messages_in_total";
/// Counter: frames sent to clients, label `kind` (reply, event, connected).
pub const MESSAGES_OUT: &str = "realtime_messages_out_total";
/// Counter: successful room joins.
pub const JOINS: &str = "realtime_joins_total";
/// Counter: error replies and HTTP errors by `code`.
pub const ERRORS: &str = "realtime_errors_total";
/// Counter: server-initiated closes by `reason`.
pub const CLOSES: &str = "realtime_closes_total";
/// Counter: platform events dropped because the NATS publisher's queue was full.
pub const EVENTS_DROPPED: &str = "realtime_platform_events_dropped_total";
/// Counter: events published, label `source` (client, http).
pub const PUBLISHES: &str = "realtime_publishes_total";
/// Counter: room memberships registered again under a newly granted lease (Redis restarted
/// empty, a failover dropped writes, or the node's lease lapsed) while the node held the socket.
pub const MEMBERSHIPS_RESTORED: &str = "realtime_memberships_restored_total";
/// Counter: `room.presence_diff` frames this node pushed into rooms (`announce = "batched"`).
pub const PRESENCE_DIFFS: &str = "realtime_presence_diffs_total";
/// Counter: lost memberships that could not be joined again because the room filled up.
pub const MEMBERSHIPS_LOST: &str = "realtime_memberships_lost_total";
/// Counter: frames the broker brought to this node (room, user and control topics). With
/// per-room interest it follows the rooms this node holds members of, not the cluster's traffic.
/// Read from the hub when `/metrics` is scraped.
pub const BROKER_FRAMES_IN: &str = "realtime_broker_frames_in_total";
/// Gauge: what the memory allocator holds, label `state`: `in_use` (allocated and not freed),
/// `free` (freed, kept in its heaps for reuse), `mapped` (the part of `in_use` in large blocks
/// mapped apart). Read when `/metrics` is scraped (glibc only).
pub const ALLOCATOR_BYTES: &str = "realtime_allocator_bytes";
/// Counter: leases granted to a node that had held one before: its lease lapsed (the store lost its
/// data, or the node could not reach it for longer than the lease), and it registered its
/// sockets and memberships again.
pub const LEASE_LAPSES: &str = "realtime_lease_lapses_total";

/// Counter: joins into rooms with history by `outcome`: `recovered` (a `since` fully served),
/// `not_recovered` (a `since` too old, of another epoch, or ahead), `unavailable` (the history
/// store failed: the join went on without a position), `position` (no `since`: position only).
pub const HISTORY_RECOVERIES: &str = "realtime_history_recoveries_total";
/// Counter: events into rooms with history delivered without a position because the history
/// store failed (the room's next stored event starts a new epoch).
pub const HISTORY_APPEND_FAILURES: &str = "realtime_history_append_failures_total";

/// Counter: notifications stored (first time, not idempotent repeats).
pub const NOTIFICATIONS_CREATED: &str = "realtime_notifications_created_total";
/// Counter: notifications moved to the dead-letter stream (never storable, or out of deliveries).
pub const NOTIFICATIONS_DEAD_LETTERED: &str = "realtime_notifications_dead_lettered_total";

/// Counter: plugin calls, label `plugin`.
pub const PLUGIN_CALLS: &str = "realtime_plugin_calls_total";
/// Histogram: seconds per plugin call, label `plugin`.
pub const PLUGIN_CALL_SECONDS: &str = "realtime_plugin_call_duration_seconds";
/// Counter: plugin outcomes, labels `plugin`, `outcome` (pass, drop, replace, reject, trap,
/// timeout, skipped_breaker_open).
pub const PLUGIN_OUTCOMES: &str = "realtime_plugin_outcomes_total";
/// Counter: plugin traps (panic, memory limit, invalid output), label `plugin`.
pub const PLUGIN_TRAPS: &str = "realtime_plugin_traps_total";
/// Counter: plugin calls cut by the deadline, label `plugin`.
pub const PLUGIN_TIMEOUTS: &str = "realtime_plugin_timeouts_total";
/// Counter: times a plugin's circuit breaker opened, label `plugin`.
pub const PLUGIN_BREAKER_OPENED: &str = "realtime_plugin_breaker_opened_total";
/// Counter: new plugin versions refused on reload, label `plugin`.
pub const PLUGIN_RELOAD_FAILURES: &str = "realtime_plugin_reload_failures_total";

/// Plugin calls take microseconds; buckets resolve that range up to the timeout.
const PLUGIN_CALL_BUCKETS: &[f64] = &[
    0.000_001, 0.000_002, 0.000_005, 0.000_01, 0.000_02, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005,
    0.01, 0.05,
];

/// Requests take from microseconds (heartbeat without a write) to a backend timeout.
const REQUEST_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Ingest lag: milliseconds when healthy, minutes when the database was down.
const INGEST_LAG_BUCKETS: &[f64] = &[0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0];

/// Publish to write: `ts` has millisecond resolution, so 0 means "within the same millisecond";
/// healthy fan-outs take a few milliseconds, a backlog or clock skew much more.
const PUBLISH_TO_WRITE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Handshakes are expected in single-digit milliseconds; buckets resolve that range.
const HANDSHAKE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder once per process and returns the handle `/metrics` renders.
pub fn prometheus_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(HANDSHAKE_SECONDS.to_owned()),
                    HANDSHAKE_BUCKETS,
                )
                .expect("bucket list is not empty")
                .set_buckets_for_metric(
                    Matcher::Full(PLUGIN_CALL_SECONDS.to_owned()),
                    PLUGIN_CALL_BUCKETS,
                )
                .expect("bucket list is not empty")
                .set_buckets_for_metric(Matcher::Full(REQUEST_SECONDS.to_owned()), REQUEST_BUCKETS)
                .expect("bucket list is not empty")
                .set_buckets_for_metric(Matcher::Full(BACKEND_SECONDS.to_owned()), REQUEST_BUCKETS)
                .expect("bucket list is not empty")
                .set_buckets_for_metric(Matcher::Full(GRAPHQL_SECONDS.to_owned()), REQUEST_BUCKETS)
                .expect("bucket list is not empty")
                .set_buckets_for_metric(
                    Matcher::Full(NOTIFICATION_INGEST_LAG_SECONDS.to_owned()),
                    INGEST_LAG_BUCKETS,
                )
                .expect("bucket list is not empty")
                .set_buckets_for_metric(
                    Matcher::Full(PUBLISH_TO_WRITE_SECONDS.to_owned()),
                    PUBLISH_TO_WRITE_BUCKETS,
                )
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding program's); then ours only
            // renders what it sees, which is nothing. Say so instead of failing.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// Sets the node's constant gauges and exports every label-less counter at 0, so that dashboards
/// and alerts (`increase(...)`) see a series from the start rather than none until the first
/// event.
pub fn register_node(max_connections: usize) {
    prometheus_handle();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::gauge!(MAX_CONNECTIONS).set(max_connections as f64);
    for counter in [
        JOINS,
        EVENTS_DROPPED,
        NOTIFICATIONS_CREATED,
        NOTIFICATIONS_DEAD_LETTERED,
        MEMBERSHIPS_RESTORED,
        PRESENCE_DIFFS,
        MEMBERSHIPS_LOST,
        LEASE_LAPSES,
        HISTORY_APPEND_FAILURES,
    ] {
        metrics::counter!(counter).increment(0);
    }
    for backend in ["redis", "nats", "database"] {
        metrics::counter!(BACKEND_ERRORS, "backend" => backend).increment(0);
    }
}

/// How often the recorder folds histogram samples into their buckets.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the recorder's upkeep every [`UPKEEP_INTERVAL`]. Without it, histogram samples pile up
/// until a scrape drains them, so a node that nobody scrapes grows without bound.
pub fn spawn_upkeep() -> tokio::task::JoinHandle<()> {
    let handle = prometheus_handle();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            handle.run_upkeep();
        }
    })
}

/// `MESSAGES_OUT{kind="event"}`, looked up once. It moves on every fan-out, and finding a
/// labelled counter in the recorder each time costs more than the increment itself
/// (docs/benchmarks.md, "Where the limits come from").
pub fn events_out() -> &'static Counter {
    static EVENTS_OUT: OnceLock<Counter> = OnceLock::new();
    EVENTS_OUT.get_or_init(|| {
        // The recorder first, so that the handle is not the no-op of a process without one.
        prometheus_handle();
        metrics::counter!(MESSAGES_OUT, "kind" => "event")
    })
}
