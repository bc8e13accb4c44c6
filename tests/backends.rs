//! The backend conformance tests against the real Redis, NATS, SQLite and PostgreSQL of this
//! machine: one module per backend and trait, one test per guarantee (see
//! `realtime_core::conformance`). Every factory below is evaluated once per test, so each test
//! gets its own key prefix, subject prefix or database connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use realtime_core::config::{RedisSettings, Settings};
use realtime_core::conformance::rooms::RoomNode;
use realtime_core::notifications::NotificationStore;
use realtime_core::stores::history_jetstream::JetStreamHistory;
use realtime_core::stores::nats::{NatsBroker, connect};
use realtime_core::stores::redis::{
    RedisBroker, RedisConnector, RedisPresenceStore, RedisRateLimiter, RedisRoomStore,
};
use realtime_core::stores::{Broker, DeliveryHandler, HistoryStore, PresenceStore, RateLimiter};
use realtime_tests::{NATS_URL, REDIS_URL, unique};

/// What a node factory returns: the future of one more node.
type Node<T> = Pin<Box<dyn Future<Output = T>>>;

fn redis_settings() -> RedisSettings {
    let mut settings = Settings::defaults().redis;
    settings.url = Some(REDIS_URL.to_owned());
    settings.key_prefix = format!("{}:", unique("conformance"));
    settings
}

/// Every call is one more node: its own Redis connection, the same key prefix.
fn redis_presence_nodes() -> impl Fn() -> Node<Arc<dyn PresenceStore>> {
    let settings = redis_settings();
    move || {
        let settings = settings.clone();
        Box::pin(async move {
            let redis = RedisConnector::connect(&settings)
                .await
                .expect("redis at 127.0.0.1:6379");
            Arc::new(RedisPresenceStore::new(redis)) as Arc<dyn PresenceStore>
        })
    }
}

realtime_core::presence_conformance_tests!(redis_presence, super::redis_presence_nodes());

/// Every call is one more node: its own Redis connection, the same key prefix, with the room
/// store and the presence store (which holds the node's lease) on that connection.
fn redis_room_nodes() -> impl Fn() -> Node<RoomNode> {
    let settings = redis_settings();
    move || {
        let settings = settings.clone();
        Box::pin(async move {
            let redis = RedisConnector::connect(&settings)
                .await
                .expect("redis at 127.0.0.1:6379");
            RoomNode {
                rooms: Arc::new(RedisRoomStore::new(redis.clone())),
                presence: Arc::new(RedisPresenceStore::new(redis)),
            }
        })
    }
}

realtime_core::room_conformance_tests!(redis_rooms, super::redis_room_nodes());

/// Every call is one more node: its own Redis connection and Pub/Sub, the same key prefix.
fn redis_broker_nodes() -> impl Fn(DeliveryHandler) -> Node<Arc<dyn Broker>> {
    let settings = redis_settings();
    move |deliver| {
        let settings = settings.clone();
        Box::pin(async move {
            let redis = RedisConnector::connect(&settings)
                .await
                .expect("redis at 127.0.0.1:6379");
            Arc::new(
                RedisBroker::connect(&settings, redis, deliver)
                    .await
                    .expect("redis pub/sub"),
            ) as Arc<dyn Broker>
        })
    }
}

realtime_core::broker_conformance_tests!(redis_broker, super::redis_broker_nodes());

/// Every call is one more node: its own NATS connection, the same subject prefix.
fn nats_broker_nodes() -> impl Fn(DeliveryHandler) -> Node<Arc<dyn Broker>> {
    let prefix = unique("conformance");
    move |deliver| {
        let prefix = prefix.clone();
        Box::pin(async move {
            let client = connect(NATS_URL, "conformance")
                .await
                .expect("nats at 127.0.0.1:4222");
            Arc::new(NatsBroker::new(client, &prefix, deliver)) as Arc<dyn Broker>
        })
    }
}

realtime_core::broker_conformance_tests!(nats_broker, super::nats_broker_nodes());

/// Every call is one more node: its own Redis connection, the same key prefix.
fn redis_rate_limiter_nodes() -> impl Fn() -> Node<Arc<dyn RateLimiter>> {
    let settings = redis_settings();
    move || {
        let settings = settings.clone();
        Box::pin(async move {
            let redis = RedisConnector::connect(&settings)
                .await
                .expect("redis at 127.0.0.1:6379");
            Arc::new(RedisRateLimiter::new(redis)) as Arc<dyn RateLimiter>
        })
    }
}

realtime_core::rate_limit_conformance_tests!(redis_rate_limiter, super::redis_rate_limiter_nodes());

async fn sql_store(url: &str) -> Arc<dyn NotificationStore> {
    use realtime_core::notifications::sql;
    let mut settings = Settings::defaults().database;
    settings.url = url.to_owned();
    let pool = sql::connect(&settings)
        .await
        .unwrap_or_else(|error| panic!("{url}: {error}"));
    sql::migrate(&pool).await.expect("migrations apply");
    Arc::new(sql::SqlNotificationStore::new(pool))
}

/// Every call is a new, empty in-memory SQLite database.
fn sqlite_stores() -> impl Fn() -> Node<Arc<dyn NotificationStore>> {
    || Box::pin(sql_store("sqlite::memory:"))
}

realtime_core::notification_conformance_tests!(sqlite_notifications, super::sqlite_stores());

/// Every call is a new pool on the test PostgreSQL database (users are random per test).
fn postgres_stores() -> impl Fn() -> Node<Arc<dyn NotificationStore>> {
    || Box::pin(sql_store(realtime_tests::POSTGRES_URL))
}

realtime_core::notification_conformance_tests!(postgres_notifications, super::postgres_stores());

/// Every call is one more node: its own NATS connection, the same JetStream streams.
fn jetstream_history_nodes()
-> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Arc<dyn HistoryStore>> + Send>> {
    || {
        Box::pin(async {
            let client = connect(NATS_URL, &unique("history-node"))
                .await
                .expect("nats at 127.0.0.1:4222");
            Arc::new(JetStreamHistory::new(client, "conformance")) as Arc<dyn HistoryStore>
        })
    }
}

realtime_core::history_conformance_tests!(jetstream_history, super::jetstream_history_nodes());
