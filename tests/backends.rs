//! The backend conformance suites against the real Redis and NATS of this machine.

use std::sync::Arc;

use realtime_core::config::{RedisSettings, Settings};
use realtime_core::conformance::{broker_suite, presence_suite, room_suite};
use realtime_core::stores::history_jetstream::JetStreamHistory;
use realtime_core::stores::nats::{NatsBroker, connect};
use realtime_core::stores::redis::{
    RedisBroker, RedisConnector, RedisPresenceStore, RedisRoomStore,
};
use realtime_core::stores::{Broker, HistoryStore, PresenceStore, RoomStore};
use realtime_tests::{NATS_URL, REDIS_URL, unique};

fn redis_settings() -> RedisSettings {
    let mut settings = Settings::defaults().redis;
    settings.url = Some(REDIS_URL.to_owned());
    settings.key_prefix = format!("{}:", unique("conformance"));
    settings
}

#[tokio::test]
async fn redis_presence_conforms() {
    let settings = redis_settings();
    presence_suite(|| {
        let settings = settings.clone();
        async move {
            let redis = RedisConnector::connect(&settings)
                .await
                .expect("redis at 127.0.0.1:6379");
            Arc::new(RedisPresenceStore::new(redis)) as Arc<dyn PresenceStore>
        }
    })
    .await;
}

#[tokio::test]
async fn redis_rooms_conform() {
    let settings = redis_settings();
    room_suite(|| {
        let settings = settings.clone();
        async move {
            let redis = RedisConnector::connect(&settings)
                .await
                .expect("redis at 127.0.0.1:6379");
            Arc::new(RedisRoomStore::new(redis)) as Arc<dyn RoomStore>
        }
    })
    .await;
}

#[tokio::test]
async fn redis_broker_conforms() {
    let settings = redis_settings();
    broker_suite(|deliver| {
        let settings = settings.clone();
        async move {
            let redis = RedisConnector::connect(&settings)
                .await
                .expect("redis at 127.0.0.1:6379");
            Arc::new(
                RedisBroker::connect(&settings, redis, deliver)
                    .await
                    .expect("redis pub/sub"),
            ) as Arc<dyn Broker>
        }
    })
    .await;
}

#[tokio::test]
async fn nats_broker_conforms() {
    let prefix = unique("conformance");
    broker_suite(|deliver| {
        let prefix = prefix.clone();
        async move {
            let client = connect(NATS_URL, "conformance")
                .await
                .expect("nats at 127.0.0.1:4222");
            Arc::new(NatsBroker::new(client, &prefix, deliver)) as Arc<dyn Broker>
        }
    })
    .await;
}

#[tokio::test]
async fn redis_rate_limiter_conforms() {
    let settings = redis_settings();
    realtime_core::conformance::rate_limit_suite(|| {
        let settings = settings.clone();
        async move {
            let redis = RedisConnector::connect(&settings)
                .await
                .expect("redis at 127.0.0.1:6379");
            Arc::new(realtime_core::stores::redis::RedisRateLimiter::new(redis))
                as Arc<dyn realtime_core::stores::RateLimiter>
        }
    })
    .await;
}

async fn sql_store(url: &str) -> Arc<dyn realtime_core::notifications::NotificationStore> {
    use realtime_core::notifications::sql;
    let mut settings = Settings::defaults().database;
    settings.url = url.to_owned();
    let pool = sql::connect(&settings)
        .await
        .unwrap_or_else(|error| panic!("{url}: {error}"));
    sql::migrate(&pool).await.expect("migrations apply");
    Arc::new(sql::SqlNotificationStore::new(pool))
}

#[tokio::test]
async fn sqlite_notification_store_conforms() {
    realtime_core::conformance::notification_suite(sql_store("sqlite::memory:").await).await;
}

#[tokio::test]
async fn postgres_notification_store_conforms() {
    realtime_core::conformance::notification_suite(sql_store(realtime_tests::POSTGRES_URL).await)
        .await;
}

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
