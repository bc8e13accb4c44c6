//! Rooms: join/leave events, capacity, claims, id and type checks, presence, client publish.

use realtime_tests::TestServer;
use serde_json::json;

#[tokio::test]
async fn members_see_joins_and_leaves_and_presence_lists_members() {
    let server = TestServer::start().await.unwrap();
    let mut alice = server.connect("alice").await.unwrap();
    let mut bob = server.connect("bob").await.unwrap();
    let reply = alice.join("chat:lobby").await.unwrap();
    assert_eq!(reply["room"], "chat:lobby");
    let own = alice.next_event_named("room.user_joined").await.unwrap();
    assert_eq!(own["data"]["userId"], "alice");

    bob.join("chat:lobby").await.unwrap();
    let joined = alice.next_event_named("room.user_joined").await.unwrap();
    assert_eq!(joined["room"], "chat:lobby");
    assert_eq!(joined["data"]["userId"], "bob");
    assert!(joined["ts"].as_u64().is_some());

    let presence = alice
        .ok(json!({"op":"presence","room":"chat:lobby"}), 2)
        .await
        .unwrap();
    assert_eq!(presence["members"], json!(["alice", "bob"]));

    bob.ok(json!({"op":"leave","room":"chat:lobby"}), 3)
        .await
        .unwrap();
    let left = alice.next_event_named("room.user_left").await.unwrap();
    assert_eq!(left["data"]["userId"], "bob");
    let presence = alice
        .ok(json!({"op":"presence","room":"chat:lobby"}), 4)
        .await
        .unwrap();
    assert_eq!(presence["members"], json!(["alice"]));
    assert_eq!(
        bob.error_code(json!({"op":"leave","room":"chat:lobby"}), 5)
            .await
            .unwrap(),
        "not_in_room"
    );
    assert_eq!(
        bob.error_code(json!({"op":"presence","room":"chat:lobby"}), 6)
            .await
            .unwrap(),
        "not_in_room"
    );
}

#[tokio::test]
async fn announce_off_keeps_presence_but_pushes_no_joins_or_leaves() {
    let server = TestServer::start_with(|settings| {
        let chat = settings.room_types.get_mut("chat").unwrap();
        chat.presence = true;
        chat.announce = Some(realtime_core::config::Announce::Off);
    })
    .await
    .unwrap();
    let mut alice = server.connect("alice").await.unwrap();
    let mut bob = server.connect("bob").await.unwrap();
    alice.join("chat:quiet").await.unwrap();
    bob.join("chat:quiet").await.unwrap();
    let presence = alice
        .ok(json!({"op":"presence","room":"chat:quiet"}), 2)
        .await
        .unwrap();
    assert_eq!(presence["members"], json!(["alice", "bob"]));
    bob.ok(json!({"op":"leave","room":"chat:quiet"}), 3)
        .await
        .unwrap();
    // A publish after the join and the leave: the first push alice sees must be this one.
    let (status, _) = server
        .publish(json!({"room":"chat:quiet","event":"note","data":{}}))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let first = alice.next_event().await.unwrap();
    assert_eq!(
        first["event"], "note",
        "no join or leave was pushed: {first}"
    );
}

#[tokio::test]
async fn disconnecting_leaves_rooms_with_a_leave_event() {
    let server = TestServer::start().await.unwrap();
    let mut alice = server.connect("alice").await.unwrap();
    let mut bob = server.connect("bob").await.unwrap();
    alice.join("chat:x").await.unwrap();
    bob.join("chat:x").await.unwrap();
    bob.close().await.unwrap();
    let left = alice.next_event_named("room.user_left").await.unwrap();
    assert_eq!(left["data"]["userId"], "bob");
}

#[tokio::test]
async fn a_full_room_refuses_new_users_but_not_a_members_second_socket() {
    let server = TestServer::start_with(|settings| {
        settings.room_types.get_mut("chat").unwrap().capacity = 2;
    })
    .await
    .unwrap();
    let mut first = server.connect("u1").await.unwrap();
    let mut second = server.connect("u2").await.unwrap();
    let mut third = server.connect("u3").await.unwrap();
    let mut first_again = server.connect("u1").await.unwrap();
    first.join("chat:small").await.unwrap();
    second.join("chat:small").await.unwrap();
    assert_eq!(
        third
            .error_code(json!({"op":"join","room":"chat:small"}), 1)
            .await
            .unwrap(),
        "room_full"
    );
    first_again.join("chat:small").await.unwrap();
    second
        .ok(json!({"op":"leave","room":"chat:small"}), 2)
        .await
        .unwrap();
    third.join("chat:small").await.unwrap();
}

#[tokio::test]
async fn claims_rooms_need_a_grant() {
    let server = TestServer::start().await.unwrap();
    let mut no_grant = server.connect("u1").await.unwrap();
    assert_eq!(
        no_grant
            .error_code(json!({"op":"join","room":"competition:42"}), 1)
            .await
            .unwrap(),
        "room_forbidden"
    );
    let mut wildcard = server
        .connect_with_rooms("u2", &["competition:*"])
        .await
        .unwrap();
    wildcard.join("competition:42").await.unwrap();
    let mut exact = server
        .connect_with_rooms("u3", &["lesson:7"])
        .await
        .unwrap();
    exact.join("lesson:7").await.unwrap();
    assert_eq!(
        exact
            .error_code(json!({"op":"join","room":"lesson:8"}), 2)
            .await
            .unwrap(),
        "room_forbidden"
    );
    assert_eq!(
        exact
            .error_code(json!({"op":"join","room":"competition:1"}), 3)
            .await
            .unwrap(),
        "room_forbidden"
    );
}

#[tokio::test]
async fn bad_ids_and_unknown_types_have_their_own_codes() {
    let server = TestServer::start().await.unwrap();
    let mut client = server.connect("u1").await.unwrap();
    assert_eq!(
        client
            .error_code(json!({"op":"join","room":"nosuchtype:1"}), 1)
            .await
            .unwrap(),
        "unknown_room_type"
    );
    for (index, bad) in [
        "chat",
        "chat:",
        "chat:a b",
        "chat:a:b",
        &format!("chat:{}", "x".repeat(130)),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(
            client
                .error_code(json!({"op":"join","room":bad}), 10 + index as u64)
                .await
                .unwrap(),
            "invalid_room_id",
            "{bad}"
        );
    }
}

#[tokio::test]
async fn room_limit_per_connection_is_enforced() {
    let server = TestServer::start_with(|settings| settings.limits.max_rooms_per_connection = 2)
        .await
        .unwrap();
    let mut client = server.connect("u1").await.unwrap();
    client.join("chat:a").await.unwrap();
    client.join("chat:b").await.unwrap();
    assert_eq!(
        client
            .error_code(json!({"op":"join","room":"chat:c"}), 1)
            .await
            .unwrap(),
        "too_many_rooms"
    );
    client.join("chat:a").await.unwrap();
}

#[tokio::test]
async fn clients_publish_only_where_allowed_and_members_receive_it() {
    let server = TestServer::start().await.unwrap();
    let mut alice = server
        .connect_with_rooms("alice", &["competition:*"])
        .await
        .unwrap();
    let mut bob = server
        .connect_with_rooms("bob", &["competition:*"])
        .await
        .unwrap();
    alice.join("chat:c").await.unwrap();
    bob.join("chat:c").await.unwrap();
    alice
        .ok(
            json!({"op":"publish","room":"chat:c","event":"chat.message","data":{"text":"hi"}}),
            1,
        )
        .await
        .unwrap();
    let message = bob.next_event_named("chat.message").await.unwrap();
    assert_eq!(message["room"], "chat:c");
    assert_eq!(message["from"], "alice");
    assert_eq!(message["data"], json!({"text":"hi"}));

    alice.join("competition:9").await.unwrap();
    let forbidden = json!({"op":"publish","room":"competition:9","event":"match.update","data":{}});
    assert_eq!(
        alice.error_code(forbidden, 2).await.unwrap(),
        "publish_forbidden"
    );
    let not_member =
        json!({"op":"publish","room":"chat:elsewhere","event":"chat.message","data":{}});
    assert_eq!(
        alice.error_code(not_member, 3).await.unwrap(),
        "not_in_room"
    );
    let reserved = json!({"op":"publish","room":"chat:c","event":"room.user_joined","data":{}});
    assert_eq!(
        alice.error_code(reserved, 4).await.unwrap(),
        "invalid_event"
    );
}

#[tokio::test]
async fn a_refresh_that_no_longer_grants_a_room_leaves_it_and_members_see_the_leave() {
    let server = TestServer::start().await.unwrap();
    let room = "competition:final";
    let mut watcher = server
        .connect_with_rooms("watcher", &["competition:*"])
        .await
        .unwrap();
    let mut player = server
        .connect_with_rooms("player", &["competition:*", "lesson:7"])
        .await
        .unwrap();
    watcher.join(room).await.unwrap();
    player.join(room).await.unwrap();
    player.join("lesson:7").await.unwrap();
    // Competition rooms batch their announcements (`announce = "batched"`).
    let joined = watcher
        .next_event_named("room.presence_diff")
        .await
        .unwrap();
    assert_eq!(joined["data"]["joins"], json!(["player", "watcher"]));

    // The identity provider took the competition away; lesson:7 stays granted.
    let narrower = server.token_with("player", &["lesson:7"], 3600);
    let reply = player
        .ok(json!({"op": "refresh", "token": narrower}), 1)
        .await
        .unwrap();
    assert_eq!(reply["left"], json!([room]));

    let left = watcher
        .next_event_named("room.presence_diff")
        .await
        .unwrap();
    assert_eq!(
        (left["room"].as_str(), &left["data"]),
        (Some(room), &json!({"joins": [], "leaves": ["player"]}))
    );
    let members = watcher
        .ok(json!({"op": "presence", "room": room}), 2)
        .await
        .unwrap();
    assert_eq!(members["members"], json!(["watcher"]));
    assert_eq!(
        player
            .error_code(json!({"op": "presence", "room": room}), 3)
            .await
            .unwrap(),
        "not_in_room"
    );
    let still = player
        .ok(json!({"op": "presence", "room": "lesson:7"}), 4)
        .await
        .unwrap();
    assert_eq!(
        still["members"],
        json!(["player"]),
        "a room still granted is kept"
    );
}

#[tokio::test]
async fn clients_cannot_publish_the_events_services_publish() {
    let server = TestServer::start().await.unwrap();
    let mut mallory = server.connect("mallory").await.unwrap();
    let mut victim = server.connect("victim").await.unwrap();
    mallory.join("chat:c").await.unwrap();
    victim.join("chat:c").await.unwrap();
    for (id, event) in [
        "notification.new",
        "progress.updated",
        "tournament.start",
        "match.update",
    ]
    .into_iter()
    .enumerate()
    {
        let fake = json!({"op":"publish","room":"chat:c","event":event,"data":{"score":[9,0]}});
        assert_eq!(
            mallory.error_code(fake, id as u64).await.unwrap(),
            "invalid_event",
            "{event}"
        );
    }
    // Services still publish them into the same room.
    let (status, _) = server
        .publish(json!({"room":"chat:c","event":"match.update","data":{"score":[1,0]}}))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let update = victim.next_event_named("match.update").await.unwrap();
    assert_eq!(
        update["data"],
        json!({"score":[1,0]}),
        "only the service's update arrived"
    );
    assert!(update.get("from").is_none());
}
