//! Faults: NATS restarts, Redis outages and a Sentinel failover, on services these tests start
//! on spare ports (never the machine's shared ones).

use std::time::Duration;

use realtime_core::config::SentinelSettings;
use realtime_tests::{
    REDIS_URL, ServiceProcess, TestServer, cluster_settings, test_settings, unique,
};
use serde_json::json;

/// Retries `attempt` every 250 ms until it returns true, for at most `within`.
async fn eventually<F, Fut>(within: Duration, mut attempt: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if attempt().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// Tries a join into a new room every 250 ms until one succeeds, for at most `within`.
async fn joins_recover(client: &mut realtime_tests::Client, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut id = 100;
    while tokio::time::Instant::now() < deadline {
        id += 1;
        let request = json!({"op":"join","room":format!("chat:after{id}")});
        if client
            .request(request, id)
            .await
            .is_ok_and(|reply| reply["ok"] == true)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

#[tokio::test]
async fn nodes_reconnect_and_resubscribe_after_a_nats_restart() {
    let mut nats = ServiceProcess::nats(0).await.unwrap();
    let nats_url = format!("nats://127.0.0.1:{}", nats.port);
    let settings = cluster_settings(REDIS_URL, &nats_url);
    let node_a = TestServer::start_node(&settings).await.unwrap();
    let node_b = TestServer::start_node(&settings).await.unwrap();
    let room = unique("chat:nats");
    let mut on_a = node_a.connect("alice").await.unwrap();
    let mut on_b = node_b.connect("bob").await.unwrap();
    on_a.join(&room).await.unwrap();
    on_b.join(&room).await.unwrap();

    nats.kill();
    let (status, body) = node_a
        .publish(json!({"room":room,"event":"during","data":{}}))
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "publishing during the outage says so"
    );
    let health = reqwest::get(format!("http://{}/health", node_a.addr))
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "the node stays up without NATS");
    let (status, readiness) = node_a.ready().await.unwrap();
    assert_eq!(
        (status, readiness["failing"][0]["backend"].as_str()),
        (503, Some("nats")),
        "a node without NATS is not ready: {readiness}"
    );

    let _restarted = ServiceProcess::nats(nats.port).await.unwrap();
    // Ready means the node's subscriptions are back on the server (the probe's round trip
    // follows them), so one publish once both are ready must reach the members of both. The
    // nodes reconnect independently: an event published while one of them is still
    // reconnecting does not reach its members (core NATS delivers at most once).
    let both_ready = eventually(Duration::from_secs(20), || async {
        node_a.ready().await.unwrap().0 == 200 && node_b.ready().await.unwrap().0 == 200
    })
    .await;
    assert!(
        both_ready,
        "both nodes are ready again after NATS comes back"
    );
    let (status, body) = node_b
        .publish(json!({"room":room,"event":"after","data":{"n":1}}))
        .await
        .unwrap();
    assert_eq!(
        status, 200,
        "publishing resumes after NATS comes back: {body}"
    );
    for client in [&mut on_a, &mut on_b] {
        let event = client.next_event_named("after").await.unwrap();
        assert_eq!(
            event["room"],
            room.as_str(),
            "subscriptions were restored on both nodes"
        );
    }
    let service = async_nats::connect(&nats_url).await.unwrap();
    service
        .publish(
            node_a.subject(&format!("room.{room}")),
            json!({"event":"inbound","data":{}}).to_string().into(),
        )
        .await
        .unwrap();
    for client in [&mut on_a, &mut on_b] {
        client.next_event_named("inbound").await.unwrap();
    }
}

/// An operator's `nats sub '>'` (or an auditing service) receives every message on the server,
/// the nodes' own round-trip probes included. Joins and readiness must not depend on such a
/// probe going unanswered: with a wildcard subscriber attached, members on two nodes join, the
/// nodes stay ready, and a publish reaches both.
#[tokio::test]
async fn a_wildcard_subscriber_on_nats_stalls_neither_joins_nor_readiness() {
    let nats = ServiceProcess::nats(0).await.unwrap();
    let nats_url = format!("nats://127.0.0.1:{}", nats.port);
    let settings = cluster_settings(REDIS_URL, &nats_url);
    let node_a = TestServer::start_node(&settings).await.unwrap();
    let node_b = TestServer::start_node(&settings).await.unwrap();
    let operator = async_nats::connect(&nats_url).await.unwrap();
    let mut everything = operator.subscribe(">").await.unwrap();
    operator.flush().await.unwrap();
    let seen_by_the_operator = tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut subjects = Vec::new();
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_secs(3), everything.next()).await
        {
            subjects.push(message.subject.to_string());
        }
        subjects
    });

    let room = unique("chat:watched");
    let mut on_a = node_a.connect("alice").await.unwrap();
    let mut on_b = node_b.connect("bob").await.unwrap();
    let started = std::time::Instant::now();
    on_a.join(&room).await.unwrap();
    on_b.join(&room).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "joins waited {:?} for an answer the wildcard subscriber swallowed",
        started.elapsed()
    );
    for node in [&node_a, &node_b] {
        let (status, body) = node.ready().await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = node_a
        .publish(json!({"room":room,"event":"watched","data":{}}))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    for client in [&mut on_a, &mut on_b] {
        client.next_event_named("watched").await.unwrap();
    }
    let subjects = seen_by_the_operator.await.unwrap();
    assert!(
        subjects
            .iter()
            .any(|subject| subject.starts_with("_INBOX.")),
        "the wildcard subscriber saw the nodes' probes: {subjects:?}"
    );
}

#[tokio::test]
async fn a_redis_outage_gives_unavailable_and_heals_by_itself() {
    let mut redis = ServiceProcess::redis(0, None).await.unwrap();
    let server = TestServer::start_with(|settings| {
        settings.redis.url = Some(format!("redis://127.0.0.1:{}", redis.port));
        settings.redis.command_timeout_ms = 500;
        settings.presence.heartbeat_interval_secs = 1;
        // The lease is renewed every second, so the restarted (empty) Redis hears from the node
        // soon after it is back.
        settings.presence.node_lease_secs = 3;
    })
    .await
    .unwrap();
    let mut client = server.connect("alice").await.unwrap();
    client.join("chat:before").await.unwrap();

    redis.kill();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        client
            .error_code(json!({"op":"join","room":"chat:during"}), 1)
            .await
            .unwrap(),
        "unavailable"
    );
    // A heartbeat writes nothing to Redis (the node's lease keeps its sockets present): the
    // socket stays alive through the outage.
    client.ok(json!({"op":"heartbeat"}), 2).await.unwrap();
    let health = reqwest::get(format!("http://{}/health", server.addr))
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "the node stays up without Redis");

    let _restarted = ServiceProcess::redis(redis.port, None).await.unwrap();
    assert!(
        joins_recover(&mut client, Duration::from_secs(20)).await,
        "joins work again once Redis is back"
    );
    // The restarted Redis is empty: the node's lease is granted again, and it registers what it
    // holds, so the room joined before the outage lists alice again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut members = serde_json::Value::Null;
    for id in 0.. {
        let reply = client
            .request(json!({"op":"presence","room":"chat:before"}), 100 + id)
            .await;
        members = match reply {
            Ok(reply) => reply["members"].clone(),
            Err(error) => json!(error.to_string()),
        };
        if members == json!(["alice"]) || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        members,
        json!(["alice"]),
        "the membership held through the outage is registered again"
    );
}

#[tokio::test]
async fn the_service_follows_a_sentinel_failover() {
    let mut master = ServiceProcess::redis(0, None).await.unwrap();
    let replica = ServiceProcess::redis(0, Some(master.port)).await.unwrap();
    let sentinel = ServiceProcess::sentinel(master.port).await.unwrap();
    let sentinel_url = format!("redis://127.0.0.1:{}", sentinel.port);
    let sentinel_client = redis::Client::open(sentinel_url.as_str()).unwrap();
    let mut sentinel_connection = sentinel_client
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // Failover needs Sentinel to know the replica; it learns it from the master's INFO.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let replicas: redis::Value = redis::cmd("SENTINEL")
            .arg("replicas")
            .arg("mymaster")
            .query_async(&mut sentinel_connection)
            .await
            .unwrap();
        if matches!(replicas, redis::Value::Array(ref list) if !list.is_empty()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sentinel never discovered the replica"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let mut settings = test_settings();
    settings.redis.url = None;
    settings.redis.sentinel = Some(SentinelSettings {
        master_name: "mymaster".into(),
        addresses: vec![sentinel_url.clone()],
    });
    settings.redis.command_timeout_ms = 500;
    let server = TestServer::start_node(&settings).await.unwrap();
    let mut client = server.connect("alice").await.unwrap();
    client.join("chat:before-failover").await.unwrap();

    master.kill();
    assert!(
        joins_recover(&mut client, Duration::from_secs(45)).await,
        "joins work again on the promoted master"
    );
    let promoted =
        redis::Client::open(format!("redis://127.0.0.1:{}", replica.port).as_str()).unwrap();
    let mut promoted = promoted.get_multiplexed_async_connection().await.unwrap();
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut promoted).await.unwrap();
    assert_eq!(
        role.first(),
        Some(&redis::Value::BulkString(b"master".to_vec())),
        "the replica was promoted"
    );
}

/// Publishes into `room` through `via` until one publish reaches every client, for at most
/// `within`. Publishes during a failover may be lost (delivery is at most once); what matters is
/// that delivery resumes for every member on every node.
async fn a_publish_reaches_everyone(
    via: &TestServer,
    room: &str,
    clients: &mut [&mut realtime_tests::Client],
    within: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut probe = 0;
    while tokio::time::Instant::now() < deadline {
        probe += 1;
        let _ = via
            .publish(json!({"room": room, "event": "probe", "data": {"n": probe}}))
            .await;
        let mut everyone = true;
        for client in clients.iter_mut() {
            let received = tokio::time::timeout(Duration::from_millis(700), async {
                loop {
                    match client.next_event().await {
                        Ok(event) if event["event"] == "probe" && event["data"]["n"] == probe => {
                            return true;
                        }
                        Ok(_) => continue,
                        Err(_) => return false,
                    }
                }
            })
            .await
            .unwrap_or(false);
            everyone &= received;
        }
        if everyone {
            return true;
        }
    }
    false
}

/// Sends `heartbeat` ops from every client (refreshing presence and memberships, as live
/// clients do) until `room`'s presence lists exactly `expected`, for at most `within`.
async fn presence_becomes(
    clients: &mut [&mut realtime_tests::Client],
    room: &str,
    expected: &[&str],
    within: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut id = 10_000;
    let mut last = serde_json::Value::Null;
    while tokio::time::Instant::now() < deadline {
        for client in clients.iter_mut() {
            id += 1;
            let _ = client.request(json!({"op": "heartbeat"}), id).await;
        }
        id += 1;
        if let Ok(reply) = clients[0]
            .request(json!({"op": "presence", "room": room}), id)
            .await
        {
            if reply["members"] == json!(expected) {
                return Ok(());
            }
            last = reply;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(format!(
        "presence never became {expected:?}; last reply {last}"
    ))
}

/// Presence lists alice and bob again (heartbeating as live clients do), and the room of
/// capacity 2 refuses a third user joining through `via`: presence and capacity are right.
async fn both_members_hold_their_places(
    alice: &mut realtime_tests::Client,
    bob: &mut realtime_tests::Client,
    room: &str,
    via: &TestServer,
) {
    presence_becomes(
        &mut [alice, bob],
        room,
        &["alice", "bob"],
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let mut carol = via.connect("carol").await.unwrap();
    assert_eq!(
        carol
            .error_code(json!({"op": "join", "room": room}), 1)
            .await
            .unwrap(),
        "room_full",
        "capacity counts both members"
    );
}

/// Two nodes on one Redis (presence, rooms and the Redis broker), a chat room of capacity 2.
fn redis_broker_settings(
    redis: realtime_core::config::RedisSettings,
) -> realtime_core::config::Settings {
    let mut settings = test_settings();
    settings.redis = redis;
    settings.redis.key_prefix = format!("{}:", unique("t"));
    settings.redis.command_timeout_ms = 500;
    settings.nats.url = None;
    settings.broker = realtime_core::config::BrokerChoice::Redis;
    settings.presence.heartbeat_interval_secs = 1;
    settings.presence.ttl_secs = 4;
    settings
        .room_types
        .get_mut("chat")
        .expect("the shipped chat room type")
        .capacity = 2;
    settings
}

#[tokio::test]
async fn the_redis_broker_follows_a_sentinel_failover_with_members_on_two_nodes() {
    let mut master = ServiceProcess::redis(0, None).await.unwrap();
    let replica = ServiceProcess::redis(0, Some(master.port)).await.unwrap();
    let sentinel = ServiceProcess::sentinel(master.port).await.unwrap();
    let sentinel_url = format!("redis://127.0.0.1:{}", sentinel.port);
    wait_until_sentinel_knows_a_replica(&sentinel_url).await;

    let mut redis = test_settings().redis;
    redis.url = None;
    redis.sentinel = Some(SentinelSettings {
        master_name: "mymaster".into(),
        addresses: vec![sentinel_url.clone()],
    });
    let settings = redis_broker_settings(redis);
    let node_a = TestServer::start_node(&settings).await.unwrap();
    let node_b = TestServer::start_node(&settings).await.unwrap();
    let room = unique("chat:final");
    let mut alice = node_a.connect("alice").await.unwrap();
    let mut bob = node_b.connect("bob").await.unwrap();
    alice.join(&room).await.unwrap();
    bob.join(&room).await.unwrap();
    assert!(
        a_publish_reaches_everyone(
            &node_a,
            &room,
            &mut [&mut alice, &mut bob],
            Duration::from_secs(5)
        )
        .await,
        "delivery works before the failover"
    );

    master.kill();
    // Until Sentinel promotes the replica (it waits down-after-milliseconds, 1 s here), no master
    // is known: a publish says so instead of answering 200 into the void.
    let refused_while_no_master = eventually(Duration::from_secs(3), || async {
        matches!(
            node_a.publish(json!({"room": room, "event": "lost", "data": {}})).await,
            Ok((503, ref body)) if body["error"]["code"] == "unavailable"
        )
    })
    .await;
    assert!(
        refused_while_no_master,
        "publishing fails loudly while no master is known"
    );
    assert!(
        a_publish_reaches_everyone(
            &node_a,
            &room,
            &mut [&mut alice, &mut bob],
            Duration::from_secs(30)
        )
        .await,
        "after the failover a publish on node A reaches the members on both nodes"
    );
    assert!(
        a_publish_reaches_everyone(
            &node_b,
            &room,
            &mut [&mut alice, &mut bob],
            Duration::from_secs(5)
        )
        .await,
        "and a publish on node B too"
    );
    both_members_hold_their_places(&mut alice, &mut bob, &room, &node_b).await;
    drop(replica);
}

/// Waits until Sentinel has discovered a replica of `mymaster` (it learns it from the master's
/// INFO); a failover before that has nothing to promote.
async fn wait_until_sentinel_knows_a_replica(sentinel_url: &str) {
    let sentinel_client = redis::Client::open(sentinel_url).unwrap();
    let mut sentinel_connection = sentinel_client
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let known = eventually(Duration::from_secs(20), || {
        let mut connection = sentinel_connection.clone();
        async move {
            let replicas: redis::RedisResult<redis::Value> = redis::cmd("SENTINEL")
                .arg("replicas")
                .arg("mymaster")
                .query_async(&mut connection)
                .await;
            matches!(replicas, Ok(redis::Value::Array(ref list)) if !list.is_empty())
        }
    })
    .await;
    assert!(known, "sentinel never discovered the replica");
    let _ = &mut sentinel_connection;
}

#[tokio::test]
async fn presence_and_capacity_are_right_again_after_redis_loses_its_data() {
    let redis_process = ServiceProcess::redis(0, None).await.unwrap();
    let redis_url = format!("redis://127.0.0.1:{}", redis_process.port);
    let mut redis = test_settings().redis;
    redis.url = Some(redis_url.clone());
    let settings = redis_broker_settings(redis);
    let node_a = TestServer::start_node(&settings).await.unwrap();
    let node_b = TestServer::start_node(&settings).await.unwrap();
    let room = unique("chat:pair");
    let mut alice = node_a.connect("alice").await.unwrap();
    let mut bob = node_b.connect("bob").await.unwrap();
    alice.join(&room).await.unwrap();
    bob.join(&room).await.unwrap();

    // What a restart without persistence, or a failover that dropped writes, leaves behind.
    let mut connection = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut connection)
        .await
        .unwrap();

    both_members_hold_their_places(&mut alice, &mut bob, &room, &node_a).await;
    assert!(
        a_publish_reaches_everyone(
            &node_b,
            &room,
            &mut [&mut alice, &mut bob],
            Duration::from_secs(5)
        )
        .await,
        "delivery is unaffected"
    );
}

#[tokio::test]
async fn nats_without_jetstream_stops_startup_saying_what_is_missing() {
    let nats = ServiceProcess::nats_without_jetstream().await.unwrap();
    let settings = cluster_settings(REDIS_URL, &format!("nats://127.0.0.1:{}", nats.port));
    let error = match TestServer::start_node(&settings).await {
        Ok(_) => panic!("a node started on NATS without JetStream"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("nats.url"), "{error}");
    assert!(error.contains("no JetStream"), "{error}");
    assert!(error.contains("-js"), "{error}");
    assert!(!error.contains("cannot connect"), "it did connect: {error}");
}
