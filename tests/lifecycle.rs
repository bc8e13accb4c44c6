//! Lifecycle: platform events, heartbeats and offline detection, token expiry and refresh,
//! slow consumers, shutdown, metrics and health.

use std::time::Duration;

use realtime_core::events::PlatformEvent;
use realtime_tests::{Ended, TestServer, wait_for_event};
use serde_json::json;

fn fast_presence(settings: &mut realtime_core::config::Settings) {
    settings.presence.ttl_secs = 2;
    settings.presence.heartbeat_interval_secs = 1;
    settings.presence.sweep_interval_secs = 1;
}

#[tokio::test]
async fn connect_and_disconnect_emit_platform_events_and_offline_follows_the_ttl() {
    let server = TestServer::start_with(fast_presence).await.unwrap();
    let mut events = server.events();
    let client = server.connect("alice").await.unwrap();
    let socket_id = client.hello["socket_id"].as_str().unwrap().to_owned();
    let connect = wait_for_event(&mut events, Duration::from_secs(5), |event| {
        matches!(event, PlatformEvent::SocketConnect { .. })
    })
    .await
    .unwrap();
    assert_eq!(
        connect,
        PlatformEvent::SocketConnect {
            user_id: "alice".into(),
            socket_id: socket_id.clone(),
            node: server.server.node_id().into(),
        }
    );
    wait_for_event(
        &mut events,
        Duration::from_secs(5),
        |event| matches!(event, PlatformEvent::UserOnline { user_id, .. } if user_id == "alice"),
    )
    .await
    .unwrap();
    client.close().await.unwrap();
    let disconnect = wait_for_event(&mut events, Duration::from_secs(5), |event| {
        matches!(event, PlatformEvent::SocketDisconnect { .. })
    })
    .await
    .unwrap();
    assert!(
        matches!(disconnect, PlatformEvent::SocketDisconnect { ref user_id, ref reason, .. } if user_id == "alice" && reason == "client_closed"),
        "{disconnect:?}"
    );
    wait_for_event(
        &mut events,
        Duration::from_secs(8),
        |event| matches!(event, PlatformEvent::UserOffline { user_id, .. } if user_id == "alice"),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn heartbeats_keep_a_user_online_past_the_ttl() {
    let server = TestServer::start_with(|settings| {
        fast_presence(settings);
        // Server pings would also keep the socket present; make them rare to test the op alone.
        settings.presence.ttl_secs = 3;
        settings.presence.heartbeat_interval_secs = 2;
    })
    .await
    .unwrap();
    let mut events = server.events();
    let mut client = server.connect("hb").await.unwrap();
    for id in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        client.ok(json!({"op":"heartbeat"}), id).await.unwrap();
    }
    let offline = wait_for_event(&mut events, Duration::from_millis(100), |event| {
        matches!(event, PlatformEvent::UserOffline { .. })
    })
    .await;
    assert!(
        offline.is_err(),
        "no user.offline while heartbeating: {offline:?}"
    );
    let mut emitted = 0;
    while let Ok(event) = events.try_recv() {
        if matches!(event, PlatformEvent::UserOffline { .. }) {
            emitted += 1;
        }
    }
    assert_eq!(emitted, 0, "no user.offline while heartbeating");
}

#[tokio::test]
async fn the_server_pings_quiet_sockets_and_spares_those_that_heartbeat() {
    let server = TestServer::start_with(|settings| {
        settings.presence.ttl_secs = 6;
        settings.presence.heartbeat_interval_secs = 2;
    })
    .await
    .unwrap();
    let mut quiet = server.connect("quiet").await.unwrap();
    let mut talking = server.connect("talking").await.unwrap();
    let mut publishing = server.connect("publishing").await.unwrap();
    publishing.join("chat:ping-test").await.unwrap();
    // A heartbeat every 400 ms: a stall of over 2 s would be needed to miss an interval.
    for id in 0..13 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        talking.ok(json!({"op":"heartbeat"}), id).await.unwrap();
        let presence = json!({"op":"presence","room":"chat:ping-test"});
        publishing.ok(presence, id).await.unwrap();
    }
    // The quiet client reads (and so answers pings) only now, 5.2 s in: pings at 2.5 s (the
    // first check comes a slack of 0.5 s after one interval) and 4.5 s.
    quiet
        .expect_silence(Duration::from_millis(200))
        .await
        .unwrap();
    assert!(
        quiet.pings_seen >= 2,
        "a quiet socket is pinged every interval: {} pings",
        quiet.pings_seen
    );
    assert_eq!(
        talking.pings_seen, 0,
        "a socket that sends heartbeats is not pinged"
    );
    assert!(
        publishing.pings_seen >= 2,
        "other requests do not spare the ping (they do not refresh presence): {} pings",
        publishing.pings_seen
    );
}

#[tokio::test]
async fn a_silent_socket_is_closed_with_heartbeat_timeout() {
    let server = TestServer::start_with(fast_presence).await.unwrap();
    let mut events = server.events();
    let _client = server.connect("quiet").await.unwrap();
    // The test client answers pings only while it reads; it does not read here, so the server
    // sees no traffic and must give up after the TTL.
    let disconnect = wait_for_event(&mut events, Duration::from_secs(8), |event| {
        matches!(event, PlatformEvent::SocketDisconnect { .. })
    })
    .await
    .unwrap();
    assert!(
        matches!(disconnect, PlatformEvent::SocketDisconnect { ref reason, .. } if reason == "heartbeat_timeout"),
        "{disconnect:?}"
    );
}

#[tokio::test]
async fn an_expired_token_closes_with_4001() {
    let server = TestServer::start().await.unwrap();
    let mut client =
        realtime_tests::Client::connect(&server.ws_url(&server.token_with("exp", &[], 2)))
            .await
            .unwrap();
    assert_eq!(
        client.expect_end().await.unwrap(),
        Ended::Closed {
            code: 4001,
            reason: "token_expired".into()
        }
    );
}

#[tokio::test]
async fn refresh_extends_the_connection_and_must_keep_the_user() {
    let server = TestServer::start().await.unwrap();
    let mut client =
        realtime_tests::Client::connect(&server.ws_url(&server.token_with("ref", &[], 2)))
            .await
            .unwrap();
    let other_user = server.token("someone-else");
    assert_eq!(
        client
            .error_code(json!({"op":"refresh","token":other_user}), 1)
            .await
            .unwrap(),
        "subject_mismatch"
    );
    assert_eq!(
        client
            .error_code(json!({"op":"refresh","token":"garbage"}), 2)
            .await
            .unwrap(),
        "invalid_token"
    );
    let reply = client
        .ok(json!({"op":"refresh","token":server.token("ref")}), 3)
        .await
        .unwrap();
    assert!(reply["expires_at"].as_u64().unwrap() > realtime_core::auth::unix_now_secs() + 1000);
    tokio::time::sleep(Duration::from_secs(3)).await;
    client.ok(json!({"op":"heartbeat"}), 4).await.unwrap();
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_as_slow_consumer() {
    let server = TestServer::start_with(|settings| settings.limits.outbox_frames = 8)
        .await
        .unwrap();
    let mut events = server.events();
    let mut reader = server.connect("slow").await.unwrap();
    reader.join("chat:firehose").await.unwrap();
    let blob = "x".repeat(60_000);
    let mut publishes = 0;
    // Loopback socket buffers absorb a few MB; keep publishing until the server gives up.
    let slow_consumer = loop {
        let event = json!({"room":"chat:firehose","event":"bulk","data":{"blob":blob}});
        server.publish(event).await.unwrap();
        publishes += 1;
        if let Ok(event) = wait_for_event(&mut events, Duration::from_millis(5), |event| {
            matches!(event, PlatformEvent::SocketDisconnect { .. })
        })
        .await
        {
            break event;
        }
        assert!(
            publishes < 2_000,
            "the server never closed the slow consumer"
        );
    };
    assert!(
        matches!(slow_consumer, PlatformEvent::SocketDisconnect { ref reason, .. } if reason == "slow_consumer"),
        "{slow_consumer:?}"
    );
}

/// A mass disconnect (everyone in a room with announcements leaves at once, as closing tabs do)
/// ends each socket as closed by its client, never as a slow consumer: the leave announcements
/// that reach sockets already on their way out must not make them look slow.
#[tokio::test]
async fn a_mass_disconnect_is_not_taken_for_slow_consumers() {
    // An outbox smaller than the leave announcements that follow a socket's end (up to 149), but
    // larger than what can reach a socket in the moment before its own Close is read.
    let server = TestServer::start_with(|settings| settings.limits.outbox_frames = 64)
        .await
        .unwrap();
    let room = realtime_tests::unique("chat:exodus");
    let mut clients = Vec::new();
    for index in 0..150 {
        let mut client = server.connect(&format!("leaver{index}")).await.unwrap();
        client.join(&room).await.unwrap();
        clients.push(client);
    }
    let mut events = server.events();
    // Every tab closes at the same moment: all Close frames go out together.
    futures_util::future::join_all(clients.iter_mut().map(|client| client.send_close()))
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()
        .unwrap();
    drop(clients);
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    while reasons.values().sum::<usize>() < 150 {
        let event = wait_for_event(&mut events, Duration::from_secs(10), |event| {
            matches!(event, PlatformEvent::SocketDisconnect { .. })
        })
        .await
        .expect("every socket ends");
        if let PlatformEvent::SocketDisconnect { reason, .. } = event {
            *reasons.entry(reason).or_default() += 1;
        }
    }
    assert!(
        !reasons.contains_key("slow_consumer"),
        "clients that left were counted as slow: {reasons:?}"
    );
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1012() {
    let server = TestServer::start().await.unwrap();
    let mut first = server.connect("a").await.unwrap();
    let mut second = server.connect("b").await.unwrap();
    let shutdown = tokio::spawn(server.server.shutdown());
    for client in [&mut first, &mut second] {
        assert_eq!(
            client.expect_end().await.unwrap(),
            Ended::Closed {
                code: 1012,
                reason: "server_restart".into()
            }
        );
    }
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .unwrap()
        .unwrap();
}

/// Shutdown returns only after every socket's teardown (rooms left, presence entry removed,
/// `socket.disconnect` emitted), not as soon as the sockets are unregistered: otherwise a
/// process exiting right after would cut those backend calls off.
#[tokio::test]
async fn shutdown_waits_for_every_socket_teardown() {
    const SOCKETS: usize = 100;
    let server = TestServer::start().await.unwrap();
    let mut clients = Vec::new();
    for number in 0..SOCKETS {
        let mut client = server.connect(&format!("user-{number}")).await.unwrap();
        client.join("chat:shutdown").await.unwrap();
        clients.push(client);
    }
    let mut events = server.events();
    tokio::time::timeout(Duration::from_secs(10), server.server.shutdown())
        .await
        .unwrap();
    let mut disconnects = 0;
    while let Ok(event) = events.try_recv() {
        if matches!(event, PlatformEvent::SocketDisconnect { ref reason, .. } if reason == "server_restart")
        {
            disconnects += 1;
        }
    }
    assert_eq!(disconnects, SOCKETS);
}

#[tokio::test]
async fn metrics_and_health_are_served() {
    let server = TestServer::start().await.unwrap();
    let mut client = server.connect("metered").await.unwrap();
    client.join("chat:m").await.unwrap();
    let health: serde_json::Value = reqwest::get(format!("http://{}/health", server.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["connections"], 1);
    let metrics = reqwest::get(format!("http://{}/metrics", server.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "realtime_connections",
        "realtime_handshakes_total",
        "realtime_handshake_duration_seconds_bucket",
        "realtime_messages_in_total",
        "realtime_messages_out_total",
        "realtime_joins_total",
        "realtime_connection_states_total",
    ] {
        assert!(metrics.contains(name), "missing {name} in /metrics");
    }
}

#[tokio::test]
async fn shutdown_turns_readiness_off_then_spreads_the_closes_over_the_drain_window() {
    const SOCKETS: usize = 40;
    let window = Duration::from_secs(2);
    let server = TestServer::start_with(|settings| settings.server.drain_window_secs = 2)
        .await
        .unwrap();
    assert_eq!(server.ready().await.unwrap().0, 200);
    let mut closes = Vec::new();
    for number in 0..SOCKETS {
        let mut client = server.connect(&format!("drained-{number}")).await.unwrap();
        closes.push(tokio::spawn(async move {
            let ended = client.expect_end().await.unwrap();
            (ended, std::time::Instant::now())
        }));
    }
    let addr = server.addr;
    let url = server.ws_url(&server.token("newcomer"));
    let started = std::time::Instant::now();
    let shutdown = tokio::spawn(server.server.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Readiness goes first: the load balancer stops sending before sockets are closed.
    let response = reqwest::get(format!("http://{addr}/ready")).await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["draining"], true);
    match realtime_tests::handshake(&url, None).await.unwrap() {
        realtime_tests::Handshake::Refused { status, body } => {
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (503, Some("unavailable"))
            );
        }
        realtime_tests::Handshake::Upgraded(_) => panic!("a draining node took a new socket"),
    }

    let mut offsets = Vec::new();
    for close in closes {
        let (ended, at) = close.await.unwrap();
        assert_eq!(
            ended,
            Ended::Closed {
                code: 1012,
                reason: "server_restart".into()
            }
        );
        offsets.push(at.duration_since(started));
    }
    offsets.sort();
    let spread = *offsets.last().unwrap() - offsets[0];
    assert!(
        spread >= window.mul_f64(0.6),
        "closes spread over {spread:?} of a {window:?} window: {offsets:?}"
    );
    // No tenth of the window holds more than a quarter of the sockets.
    let mut per_slice = [0usize; 11];
    for offset in &offsets {
        let slice = (offset.as_secs_f64() / window.as_secs_f64() * 10.0) as usize;
        per_slice[slice.min(10)] += 1;
    }
    assert!(
        per_slice.iter().all(|&count| count <= SOCKETS / 4),
        "closes bunched: {per_slice:?}"
    );
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn readiness_names_a_backend_that_is_down_and_recovers_with_it() {
    let mut redis = realtime_tests::ServiceProcess::redis(0, None)
        .await
        .unwrap();
    let server = TestServer::start_with(|settings| {
        settings.redis.url = Some(format!("redis://127.0.0.1:{}", redis.port));
        settings.redis.command_timeout_ms = 500;
    })
    .await
    .unwrap();
    let (status, body) = server.ready().await.unwrap();
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ready")),
        "{body}"
    );

    redis.kill();
    let (status, body) = server.ready().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["failing"][0]["backend"], "redis", "{body}");
    assert_eq!(body["draining"], false);
    let live = reqwest::get(format!("http://{}/health", server.addr))
        .await
        .unwrap();
    assert_eq!(
        live.status(),
        200,
        "liveness is not readiness: the process is fine"
    );

    let _back = realtime_tests::ServiceProcess::redis(redis.port, None)
        .await
        .unwrap();
    let mut recovered = false;
    for _ in 0..40 {
        if server.ready().await.unwrap().0 == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(recovered, "ready again once Redis is back");
}
