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
use realtime_core::stores::nats_round_trip::ServerRoundTrip;
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

/// A node restarted under the same id (a pod with a fixed name) within its old lease: the new
/// process is granted a fresh lease, not handed the old one, so the crashed process's sockets
/// and memberships are swept instead of being held forever (nothing local would remove them).
#[tokio::test]
async fn a_node_restarted_under_its_id_sweeps_what_the_old_process_registered() {
    use realtime_core::room::RoomId;
    use realtime_core::stores::{Lease, Member, NodeStatus, SocketEntry};
    use std::time::Duration;
    let nodes = redis_room_nodes();
    let (crashed, restarted, observer) = (nodes().await, nodes().await, nodes().await);
    let node_id = unique("node-");
    let status = NodeStatus {
        node_id: node_id.clone(),
        connections: 0,
        version: "test".to_owned(),
        announced_at_ms: 0,
    };
    let lease = Duration::from_secs(60);
    let user = unique("ghost-");
    let room = RoomId::parse(&unique("chat:restart")).unwrap();
    assert_eq!(
        crashed
            .presence
            .announce_node(&status, lease)
            .await
            .unwrap(),
        Lease::Granted
    );
    let socket = SocketEntry {
        user_id: Arc::from(user.as_str()),
        socket_id: Arc::from("s1"),
        node_id: Arc::from(node_id.as_str()),
    };
    crashed.presence.connect(&socket).await.unwrap();
    let member = Member::of_socket(&socket);
    crashed.rooms.join(&room, &member, 10).await.unwrap();
    assert_eq!(
        crashed
            .presence
            .announce_node(&status, lease)
            .await
            .unwrap(),
        Lease::Held,
        "the same process renews its lease"
    );

    assert_eq!(
        restarted
            .presence
            .announce_node(&status, lease)
            .await
            .unwrap(),
        Lease::Granted,
        "a new process under the same id is granted a fresh lease"
    );
    assert!(
        observer
            .presence
            .sockets_of(&user)
            .await
            .unwrap()
            .is_empty(),
        "the old process's socket is gone"
    );
    assert!(
        observer.rooms.members(&room).await.unwrap().is_empty(),
        "the old process's membership is gone"
    );
}

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
            let round_trip = Arc::new(ServerRoundTrip::new(client.clone()));
            Arc::new(NatsBroker::new(client, &prefix, deliver, round_trip)) as Arc<dyn Broker>
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

/// A lapsed node larger than one script call's sweep (500 registrations): one `take_offline`
/// goes on calling until it is swept, and takes each of its users offline once; its rooms are
/// empty after.
#[tokio::test]
async fn a_large_lapsed_node_is_swept_in_slices_by_one_take_offline() {
    use futures_util::future::join_all;
    use realtime_core::room::RoomId;
    use realtime_core::stores::{Member, NodeStatus, SocketEntry};
    use std::time::Duration;
    const SOCKETS: usize = 1_200;
    let nodes = redis_room_nodes();
    let (dying, observer) = (nodes().await, nodes().await);
    let node_id = unique("node-");
    let status = NodeStatus {
        node_id: node_id.clone(),
        connections: SOCKETS as u64,
        version: "test".to_owned(),
        announced_at_ms: 0,
    };
    let lease = Duration::from_millis(1_500);
    dying.presence.announce_node(&status, lease).await.unwrap();
    let rooms = [
        RoomId::parse(&unique("chat:slices")).unwrap(),
        RoomId::parse(&unique("chat:slices")).unwrap(),
    ];
    let users: Vec<String> = (0..SOCKETS).map(|_| unique("swept-")).collect();
    let registered = users.iter().enumerate().map(|(index, user)| {
        let dying = dying.clone();
        let room = rooms[index % 2].clone();
        let node_id = node_id.clone();
        async move {
            let socket = SocketEntry {
                user_id: Arc::from(user.as_str()),
                socket_id: Arc::from(format!("s{index}").as_str()),
                node_id: Arc::from(node_id.as_str()),
            };
            dying.presence.connect(&socket).await.unwrap();
            let member = Member::of_socket(&socket);
            dying.rooms.join(&room, &member, 10_000).await.unwrap();
        }
    });
    join_all(registered).await;
    assert_eq!(
        observer.rooms.members(&rooms[0]).await.unwrap().len(),
        SOCKETS / 2
    );

    tokio::time::sleep(lease + Duration::from_millis(300)).await;
    let taken = observer.presence.take_offline().await.unwrap();
    let ours = taken.iter().filter(|user| users.contains(user)).count();
    assert_eq!(ours, SOCKETS, "every user of the lapsed node, once");
    for room in &rooms {
        assert!(
            observer.rooms.members(room).await.unwrap().is_empty(),
            "the lapsed node's memberships are swept"
        );
    }
    assert!(
        observer
            .presence
            .nodes()
            .await
            .unwrap()
            .iter()
            .all(|node| node.node_id != node_id),
        "the lapsed node is forgotten once swept"
    );
}
