//! Two nodes sharing the machine's Redis and NATS act as one service.

use std::time::Duration;

use futures_util::StreamExt;
use realtime_core::events::PlatformEvent;
use realtime_tests::{
    Client, KillableNode, NATS_URL, REDIS_URL, TestServer, cluster_settings, unique,
};
use serde_json::{Value, json};

async fn two_nodes() -> (TestServer, TestServer) {
    let settings = cluster_settings(REDIS_URL, NATS_URL);
    let first = TestServer::start_node(&settings)
        .await
        .expect("node A (needs redis and nats)");
    let second = TestServer::start_node(&settings).await.expect("node B");
    (first, second)
}

#[tokio::test]
async fn members_on_both_nodes_receive_nats_and_http_publishes() {
    let (node_a, node_b) = two_nodes().await;
    let room = unique("competition:m");
    let mut on_a = node_a
        .connect_with_rooms("alice", &["competition:*"])
        .await
        .unwrap();
    let mut on_b = node_b
        .connect_with_rooms("bob", &["competition:*"])
        .await
        .unwrap();
    on_a.join(&room).await.unwrap();
    on_b.join(&room).await.unwrap();

    let service = node_a.nats_client().await.unwrap();
    let body = json!({"event":"match.update","data":{"score":[3,1]}});
    service
        .publish(
            node_a.subject(&format!("room.{room}")),
            body.to_string().into(),
        )
        .await
        .unwrap();
    for client in [&mut on_a, &mut on_b] {
        let event = client.next_event_named("match.update").await.unwrap();
        assert_eq!(event["room"], room.as_str());
        assert_eq!(event["data"], json!({"score":[3,1]}));
    }

    let (status, _) = node_b
        .publish(json!({"room":room,"event":"tournament.start","data":{"round":1}}))
        .await
        .unwrap();
    assert_eq!(status, 200);
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(
            client.next_event_named("tournament.start").await.unwrap()["data"]["round"],
            1
        );
    }
}

#[tokio::test]
async fn user_publishes_reach_every_socket_of_the_user_on_every_node() {
    let (node_a, node_b) = two_nodes().await;
    let user = unique("user-");
    let mut phone = node_a.connect(&user).await.unwrap();
    let mut laptop = node_b.connect(&user).await.unwrap();
    let service = node_a.nats_client().await.unwrap();
    let body = json!({"event":"notification.new","data":{"id":"n-1"}});
    let reply = service
        .request(
            node_a.subject(&format!("user.{user}")),
            body.to_string().into(),
        )
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&reply.payload).unwrap(),
        json!({"ok":true,"delivered":true})
    );
    for socket in [&mut phone, &mut laptop] {
        let event = socket.next_event_named("notification.new").await.unwrap();
        assert_eq!(event["data"]["id"], "n-1");
        assert!(event.get("room").is_none());
    }
}

#[tokio::test]
async fn bad_inbound_nats_messages_get_a_coded_reply() {
    let (node_a, _node_b) = two_nodes().await;
    let service = node_a.nats_client().await.unwrap();
    for (subject, body, code) in [
        (
            node_a.subject("room.chat:x"),
            "not json".to_owned(),
            "invalid_request",
        ),
        (
            node_a.subject("room.nosuchtype:x"),
            json!({"event":"e","data":{}}).to_string(),
            "unknown_room_type",
        ),
        (
            node_a.subject("room.chat:x"),
            json!({"event":"room.user_joined","data":{}}).to_string(),
            "invalid_event",
        ),
    ] {
        let reply = service.request(subject, body.into()).await.unwrap();
        let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(reply["error"]["code"], code, "{reply}");
    }
}

#[tokio::test]
async fn capacity_holds_across_nodes() {
    let mut settings = cluster_settings(REDIS_URL, NATS_URL);
    settings.room_types.get_mut("chat").unwrap().capacity = 2;
    let node_a = TestServer::start_node(&settings).await.unwrap();
    let node_b = TestServer::start_node(&settings).await.unwrap();
    let room = unique("chat:cap");
    let mut first = node_a.connect("u1").await.unwrap();
    let mut second = node_b.connect("u2").await.unwrap();
    let mut third = node_b.connect("u3").await.unwrap();
    first.join(&room).await.unwrap();
    second.join(&room).await.unwrap();
    assert_eq!(
        third
            .error_code(json!({"op":"join","room":room}), 1)
            .await
            .unwrap(),
        "room_full"
    );
    let mut third_on_a = node_a.connect("u3").await.unwrap();
    assert_eq!(
        third_on_a
            .error_code(json!({"op":"join","room":room}), 2)
            .await
            .unwrap(),
        "room_full"
    );
}

#[tokio::test]
async fn presence_lists_members_from_both_nodes() {
    let (node_a, node_b) = two_nodes().await;
    let room = unique("chat:p");
    let mut on_a = node_a.connect("alice").await.unwrap();
    let mut on_b = node_b.connect("bob").await.unwrap();
    on_a.join(&room).await.unwrap();
    on_b.join(&room).await.unwrap();
    let joined = on_a.next_event_named("room.user_joined").await.unwrap();
    assert_eq!(joined["data"]["userId"], "alice");
    let joined = on_a.next_event_named("room.user_joined").await.unwrap();
    assert_eq!(
        joined["data"]["userId"], "bob",
        "a join on node B is announced on node A"
    );
    let presence = on_b
        .ok(json!({"op":"presence","room":room}), 5)
        .await
        .unwrap();
    assert_eq!(presence["members"], json!(["alice", "bob"]));
}

/// Counts messages on a subject for `window`, keeping those whose body names `user`.
async fn count_for_user(
    subscriber: &mut async_nats::Subscriber,
    user: &str,
    window: Duration,
) -> usize {
    let mut count = 0;
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, subscriber.next()).await {
        let body: Value = serde_json::from_slice(&message.payload).unwrap();
        if body["userId"] == user {
            count += 1;
        }
    }
    count
}

#[tokio::test]
async fn each_user_goes_online_and_offline_exactly_once_across_nodes() {
    let mut settings = cluster_settings(REDIS_URL, NATS_URL);
    settings.presence.ttl_secs = 2;
    settings.presence.heartbeat_interval_secs = 1;
    settings.presence.sweep_interval_secs = 1;
    let node_a = TestServer::start_node(&settings).await.unwrap();
    let node_b = TestServer::start_node(&settings).await.unwrap();
    let watcher = node_a.nats_client().await.unwrap();
    let mut online = watcher
        .subscribe(node_a.subject("events.user.online"))
        .await
        .unwrap();
    let mut offline = watcher
        .subscribe(node_a.subject("events.user.offline"))
        .await
        .unwrap();
    let mut connects = watcher
        .subscribe(node_a.subject("events.socket.connect"))
        .await
        .unwrap();
    watcher.flush().await.unwrap();

    let user = unique("u-");
    let on_a = node_a.connect(&user).await.unwrap();
    let on_b = node_b.connect(&user).await.unwrap();
    on_a.close().await.unwrap();
    on_b.close().await.unwrap();
    assert_eq!(
        count_for_user(&mut connects, &user, Duration::from_millis(500)).await,
        2,
        "socket.connect per socket"
    );
    assert_eq!(
        count_for_user(&mut online, &user, Duration::from_millis(200)).await,
        1,
        "one user.online"
    );
    // Both nodes sweep every second; the TTL is 2 s. Watch well past it.
    assert_eq!(
        count_for_user(&mut offline, &user, Duration::from_secs(6)).await,
        1,
        "one user.offline"
    );
}

#[tokio::test]
async fn a_killed_nodes_members_disappear_with_its_lease() {
    let mut settings = cluster_settings(REDIS_URL, NATS_URL);
    settings.presence.ttl_secs = 2;
    settings.presence.heartbeat_interval_secs = 1;
    settings.presence.sweep_interval_secs = 1;
    // The killed node's sockets and memberships go when its lease lapses.
    settings.presence.node_lease_secs = 3;
    settings.room_types.get_mut("chat").unwrap().capacity = 2;
    let survivor = TestServer::start_node(&settings).await.unwrap();
    let mut doomed = KillableNode::start(&settings).unwrap();
    let room = unique("chat:ghost");
    let watcher = survivor.nats_client().await.unwrap();
    let mut offline = watcher
        .subscribe(survivor.subject("events.user.offline"))
        .await
        .unwrap();
    watcher.flush().await.unwrap();

    let mut alice = survivor.connect("alice").await.unwrap();
    alice.join(&room).await.unwrap();
    let ghost_user = unique("ghost-");
    let mut ghost = Client::connect(&doomed.ws_url(&survivor.token(&ghost_user)))
        .await
        .unwrap();
    ghost.join(&room).await.unwrap();
    let presence = alice
        .ok(json!({"op":"presence","room":room}), 1)
        .await
        .unwrap();
    assert_eq!(presence["members"].as_array().unwrap().len(), 2);
    let mut latecomer = survivor.connect("carol").await.unwrap();
    assert_eq!(
        latecomer
            .error_code(json!({"op":"join","room":room}), 2)
            .await
            .unwrap(),
        "room_full"
    );

    doomed.kill();
    let ghost_for_count = ghost_user.clone();
    let offline_count = tokio::spawn(async move {
        count_for_user(&mut offline, &ghost_for_count, Duration::from_secs(6)).await
    });
    // Keep the survivors' sockets busy (the idle limit is short) while the ghost's lease lapses.
    let mut members = Value::Null;
    for id in 10..30 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        latecomer.ok(json!({"op":"heartbeat"}), id).await.unwrap();
        members = alice
            .ok(json!({"op":"presence","room":room}), id)
            .await
            .unwrap()["members"]
            .clone();
        if members == json!(["alice"]) {
            break;
        }
    }
    assert_eq!(
        members,
        json!(["alice"]),
        "the dead node's member is gone once its lease lapsed"
    );
    latecomer.join(&room).await.unwrap();
    assert_eq!(
        offline_count.await.unwrap(),
        1,
        "the ghost goes offline exactly once"
    );
}

#[tokio::test]
async fn nodes_receive_only_traffic_for_rooms_their_sockets_are_in() {
    let (node_a, node_b) = two_nodes().await;
    let mine: Vec<String> = (0..3).map(|_| unique("chat:mine")).collect();
    let mut client = node_a.connect("listener").await.unwrap();
    for room in &mine {
        client.join(room).await.unwrap();
        client.next_event_named("room.user_joined").await.unwrap();
    }
    let before = node_a.server.broker_deliveries();
    let elsewhere = 500;
    for index in 0..elsewhere {
        let room = format!("chat:elsewhere{index}-{}", unique(""));
        node_b
            .publish(json!({"room":room,"event":"e","data":{}}))
            .await
            .unwrap();
    }
    for room in &mine {
        node_b
            .publish(json!({"room":room,"event":"mine","data":{}}))
            .await
            .unwrap();
    }
    for _ in &mine {
        client.next_event_named("mine").await.unwrap();
    }
    let received = node_a.server.broker_deliveries() - before;
    println!(
        "node A received {received} broker messages for {} publishes ({elsewhere} to rooms it has no member in)",
        elsewhere + mine.len()
    );
    assert_eq!(
        received,
        mine.len() as u64,
        "per-room interest: nothing for rooms without a local member"
    );
}

#[tokio::test]
async fn the_redis_broker_carries_events_between_nodes() {
    let mut settings = cluster_settings(REDIS_URL, NATS_URL);
    settings.nats.url = None;
    settings.broker = realtime_core::config::BrokerChoice::Redis;
    let node_a = TestServer::start_node(&settings).await.unwrap();
    let node_b = TestServer::start_node(&settings).await.unwrap();
    let room = unique("chat:redis");
    let mut on_a = node_a.connect("alice").await.unwrap();
    let mut on_b = node_b.connect("bob").await.unwrap();
    on_a.join(&room).await.unwrap();
    on_b.join(&room).await.unwrap();
    node_a
        .publish(json!({"room":room,"event":"chat.message","data":{"text":"hi"}}))
        .await
        .unwrap();
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(
            client.next_event_named("chat.message").await.unwrap()["data"]["text"],
            "hi"
        );
    }
    node_b
        .publish(json!({"user":"alice","event":"notification.new","data":{}}))
        .await
        .unwrap();
    on_a.next_event_named("notification.new").await.unwrap();
}

#[tokio::test]
async fn a_burst_of_platform_events_reaches_nats_whole_and_in_order() {
    let settings = cluster_settings(REDIS_URL, NATS_URL);
    let node = TestServer::start_node(&settings).await.unwrap();
    let watcher = node.nats_client().await.unwrap();
    let mut disconnects = watcher
        .subscribe(node.subject("events.socket.disconnect"))
        .await
        .unwrap();
    // A request nobody answers: its "no responders" reply proves the subscription is live.
    let _ = watcher.request(unique("nobody."), "".into()).await;
    const BURST: usize = 10_000;
    let user = unique("burst-");
    // Emitted without a pause, as a mass disconnect does: the publisher cannot run in between
    // (this test's runtime has one thread), so the whole burst waits in its queue.
    for index in 0..BURST {
        node.server.events().emit(PlatformEvent::SocketDisconnect {
            user_id: user.clone(),
            socket_id: format!("s{index}"),
            node: "test".into(),
            reason: "client_closed".into(),
        });
    }
    let mut received = 0;
    while received < BURST {
        let message = tokio::time::timeout(Duration::from_secs(10), disconnects.next())
            .await
            .unwrap_or_else(|_| panic!("only {received} of {BURST} events arrived"))
            .expect("subscription open");
        let body: Value = serde_json::from_slice(&message.payload).unwrap();
        if body["userId"] == user.as_str() {
            assert_eq!(body["socketId"], format!("s{received}"), "in order");
            received += 1;
        }
    }
}

/// Calls a node's server API with the test key (`POST` with `body`, `GET` without); returns
/// status and JSON body.
async fn server_api(
    node: &TestServer,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let url = format!("http://{}{path}", node.addr);
    let request = match body {
        Some(body) => reqwest::Client::new().post(url).json(&body),
        None => reqwest::Client::new().get(url),
    };
    let response = request
        .header("x-api-key", realtime_tests::API_KEY)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// `POST` to a node's moderation API.
async fn moderate(
    node: &TestServer,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    server_api(node, path, Some(body)).await
}

#[tokio::test]
async fn moderators_remove_a_user_from_a_room_and_disconnect_them_on_every_node() {
    let settings = cluster_settings(REDIS_URL, NATS_URL);
    let node_a = TestServer::start_node(&settings).await.unwrap();
    let node_b = TestServer::start_node(&settings).await.unwrap();
    let room = unique("chat:moderated");
    let mut troll_on_a = node_a.connect("troll").await.unwrap();
    let mut troll_on_b = node_b.connect("troll").await.unwrap();
    let mut watcher_on_a = node_a.connect("watcher-a").await.unwrap();
    let mut watcher_on_b = node_b.connect("watcher-b").await.unwrap();
    for client in [
        &mut troll_on_a,
        &mut troll_on_b,
        &mut watcher_on_a,
        &mut watcher_on_b,
    ] {
        client.join(&room).await.unwrap();
    }

    let (status, body) = moderate(
        &node_a,
        "/api/rooms/remove",
        json!({"room": room, "user": "troll", "block_secs": 60}),
    )
    .await;
    assert_eq!((status, &body["ok"]), (200, &json!(true)), "{body}");
    for troll in [&mut troll_on_a, &mut troll_on_b] {
        let removed = troll.next_event_named("room.removed").await.unwrap();
        assert_eq!(removed["room"], room.as_str());
    }
    for watcher in [&mut watcher_on_a, &mut watcher_on_b] {
        let left = loop {
            let event = watcher.next_event_named("room.user_left").await.unwrap();
            if event["data"]["userId"] == "troll" {
                break event;
            }
        };
        assert_eq!(left["room"], room.as_str());
    }
    let members = watcher_on_b
        .ok(json!({"op": "presence", "room": room}), 1)
        .await
        .unwrap();
    assert_eq!(members["members"], json!(["watcher-a", "watcher-b"]));
    let rejoin = troll_on_a
        .error_code(json!({"op": "join", "room": room}), 2)
        .await
        .unwrap();
    assert_eq!(rejoin, "room_forbidden", "blocked for block_secs");
    node_b
        .publish(json!({"room": room, "event": "after.removal", "data": {}}))
        .await
        .unwrap();
    watcher_on_a
        .next_event_named("after.removal")
        .await
        .unwrap();
    troll_on_a
        .expect_silence(Duration::from_millis(300))
        .await
        .unwrap();

    let (status, _) = moderate(
        &node_b,
        "/api/users/disconnect",
        json!({"user": "troll", "reconnect": false}),
    )
    .await;
    assert_eq!(status, 200);
    for troll in [&mut troll_on_a, &mut troll_on_b] {
        assert_eq!(
            troll.expect_end().await.unwrap(),
            realtime_tests::Ended::Closed {
                code: 4503,
                reason: "access_revoked".into()
            }
        );
    }
    watcher_on_a
        .ok(json!({"op": "heartbeat"}), 3)
        .await
        .expect("other users stay connected");

    // Every call is validated and coded.
    let (status, body) = moderate(
        &node_a,
        "/api/rooms/remove",
        json!({"room": "nope", "user": "x"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_room_id"))
    );
    let (status, body) =
        moderate(&node_a, "/api/users/disconnect", json!({"reconnect": true})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, body) = moderate(
        &node_a,
        "/api/rooms/remove",
        json!({"room": room, "user": "x", "block_secs": 99_999_999}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_request"))
    );
}

#[tokio::test]
async fn services_moderate_over_nats_requests_too() {
    let settings = cluster_settings(REDIS_URL, NATS_URL);
    let node_a = TestServer::start_node(&settings).await.unwrap();
    let node_b = TestServer::start_node(&settings).await.unwrap();
    let mut spammer_on_a = node_a.connect("spammer").await.unwrap();
    let mut spammer_on_b = node_b.connect("spammer").await.unwrap();
    let service = node_a.nats_client().await.unwrap();

    let reply = service
        .request(
            node_a.subject("api.users.disconnect"),
            json!({"user": "spammer"}).to_string().into(),
        )
        .await
        .unwrap();
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply, json!({"ok": true}));
    for spammer in [&mut spammer_on_a, &mut spammer_on_b] {
        assert_eq!(
            spammer.expect_end().await.unwrap(),
            realtime_tests::Ended::Closed {
                code: 4008,
                reason: "disconnected_by_server".into()
            },
            "reconnect allowed by default"
        );
    }

    let reply = service
        .request(
            node_a.subject("api.rooms.remove"),
            json!({"user": "spammer"}).to_string().into(),
        )
        .await
        .unwrap();
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["ok"], false);
    assert_eq!(reply["error"]["code"], "invalid_request", "{reply}");
}

/// `GET` from a node's server API.
async fn ask(node: &TestServer, path_and_query: &str) -> (u16, serde_json::Value) {
    server_api(node, path_and_query, None).await
}

#[tokio::test]
async fn room_and_user_info_cover_every_node() {
    let settings = cluster_settings(REDIS_URL, NATS_URL);
    let node_a = TestServer::start_node(&settings).await.unwrap();
    let node_b = TestServer::start_node(&settings).await.unwrap();
    let room = unique("chat:info");
    let mut ana_on_a = node_a.connect("ana").await.unwrap();
    let mut ana_on_b = node_b.connect("ana").await.unwrap();
    let mut ben_on_b = node_b.connect("ben").await.unwrap();
    for client in [&mut ana_on_a, &mut ana_on_b, &mut ben_on_b] {
        client.join(&room).await.unwrap();
    }
    let (name_a, name_b) = (
        ana_on_a.hello["node"].as_str().unwrap().to_owned(),
        ben_on_b.hello["node"].as_str().unwrap().to_owned(),
    );
    let now_ms = realtime_core::protocol::unix_now_millis();

    let (status, info) = ask(&node_a, &format!("/api/rooms/info?room={room}")).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(
        (info["users"].as_u64(), info["sockets"].as_u64()),
        (Some(2), Some(3)),
        "{info}"
    );
    assert_eq!(info["nodes"][&name_a], 1, "{info}");
    assert_eq!(info["nodes"][&name_b], 2, "{info}");
    assert_eq!(info["members"][0]["user"], "ana");
    assert_eq!(info["members"][0]["sockets"].as_array().unwrap().len(), 2);
    let last_seen = info["members"][1]["last_seen"].as_u64().unwrap();
    assert!(
        last_seen.abs_diff(now_ms) < 10_000,
        "last_seen {last_seen} is the last heartbeat, around {now_ms}"
    );

    let (status, user) = ask(&node_b, "/api/users/info?user=ana").await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["online"], true);
    assert_eq!(user["sockets"].as_array().unwrap().len(), 2);
    let mut nodes = vec![name_a.clone(), name_b.clone()];
    nodes.sort();
    assert_eq!(user["nodes"], json!(nodes));
    // ana is in two rooms: the shared one (a socket on each node) and one through node A only.
    let only_on_a = unique("chat:infoa");
    ana_on_a.join(&only_on_a).await.unwrap();
    let (_, user) = ask(&node_b, "/api/users/info?user=ana").await;
    let mut rooms = vec![room.clone(), only_on_a.clone()];
    rooms.sort();
    assert_eq!(user["rooms"], json!(rooms), "{user}");
    let user_last_seen = user["last_seen"].as_u64().unwrap();
    assert!(
        user_last_seen.abs_diff(now_ms) < 10_000,
        "the user's last_seen {user_last_seen} is around {now_ms}"
    );
    ana_on_a
        .ok(json!({"op":"leave","room":only_on_a}), 40)
        .await
        .unwrap();
    let (_, user) = ask(&node_b, "/api/users/info?user=ana").await;
    assert_eq!(
        user["rooms"],
        json!([room.clone()]),
        "left rooms go: {user}"
    );

    let (status, body) = ask(&node_a, "/api/rooms/info").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, body) = ask(&node_a, "/api/rooms/info?room=nosuchtype:x").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("unknown_room_type"))
    );
    let anonymous = reqwest::get(format!("http://{}/api/users/info?user=ana", node_a.addr))
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
}

#[tokio::test]
async fn cluster_info_lists_every_node_with_its_connections() {
    let settings = cluster_settings(REDIS_URL, NATS_URL);
    let node_a = TestServer::start_node(&settings).await.unwrap();
    let node_b = TestServer::start_node(&settings).await.unwrap();
    let first = node_b.connect("one").await.unwrap();
    let (name_a, name_b) = (
        node_a.server.node_id().to_owned(),
        node_b.server.node_id().to_owned(),
    );
    // Announcements come every few seconds; poll until node B's shows its socket.
    let mut info = serde_json::Value::Null;
    for _ in 0..40 {
        let (status, body) = ask(&node_a, "/api/cluster/info").await;
        assert_eq!(status, 200, "{body}");
        info = body;
        let connections_of = |name: &str| {
            info["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|node| node["node_id"] == name)
                .and_then(|node| node["connections"].as_u64())
        };
        if connections_of(&name_a) == Some(0) && connections_of(&name_b) == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let nodes: Vec<&str> = info["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| node["node_id"].as_str().unwrap())
        .collect();
    let mut expected = vec![name_a.as_str(), name_b.as_str()];
    expected.sort();
    assert_eq!(nodes, expected, "{info}");
    assert_eq!(info["connections"], 1, "{info}");
    assert_eq!(info["nodes"][0]["version"], env!("CARGO_PKG_VERSION"));
    drop(first);
}
