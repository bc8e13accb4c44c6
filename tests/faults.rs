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

    let _restarted = ServiceProcess::nats(nats.port).await.unwrap();
    let recovered = eventually(Duration::from_secs(20), || async {
        matches!(
            node_b
                .publish(json!({"room":room,"event":"after","data":{"n":1}}))
                .await,
            Ok((200, _))
        )
    })
    .await;
    assert!(recovered, "publishing resumes after NATS comes back");
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

#[tokio::test]
async fn a_redis_outage_gives_unavailable_and_heals_by_itself() {
    let mut redis = ServiceProcess::redis(0, None).await.unwrap();
    let server = TestServer::start_with(|settings| {
        settings.redis.url = Some(format!("redis://127.0.0.1:{}", redis.port));
        settings.redis.command_timeout_ms = 500;
        // A heartbeat writes presence at most once per half interval: 0.5 s here.
        settings.presence.heartbeat_interval_secs = 1;
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
    assert_eq!(
        client
            .error_code(json!({"op":"heartbeat"}), 2)
            .await
            .unwrap(),
        "unavailable"
    );
    let health = reqwest::get(format!("http://{}/health", server.addr))
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "the node stays up without Redis");

    let _restarted = ServiceProcess::redis(redis.port, None).await.unwrap();
    assert!(
        joins_recover(&mut client, Duration::from_secs(20)).await,
        "joins work again once Redis is back"
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
