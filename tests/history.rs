//! Room history and recovery as clients see it: positions on pushes, `join` with `since`, the
//! `history` op; on one node (memory, or JetStream with `REALTIME_TEST_BACKENDS=shared`) and on
//! clusters sharing the machine's NATS and Redis, including a killed node and JetStream stopped.

use std::time::Duration;

use realtime_tests::{
    Client, KillableNode, NATS_URL, REDIS_URL, ServiceProcess, TestServer, cluster_settings, unique,
};
use serde_json::{Value, json};

/// How long a test waits for events that must arrive.
const PATIENCE: Duration = Duration::from_secs(10);

fn position_of(value: &Value) -> (u64, String) {
    (
        value["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("an offset in {value}")),
        value["epoch"]
            .as_str()
            .unwrap_or_else(|| panic!("an epoch in {value}"))
            .to_owned(),
    )
}

async fn publish_scores(server: &TestServer, room: &str, scores: std::ops::Range<u64>) {
    for score in scores {
        let (status, body) = server
            .publish(json!({"room":room,"event":"match.update","data":{"score":score}}))
            .await
            .unwrap();
        assert_eq!(status, 200, "publish {score}: {body}");
    }
}

/// The next `count` pushes of `event`, as (offset, epoch, score).
async fn scores(client: &mut Client, count: usize) -> Vec<(u64, String, u64)> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let event = tokio::time::timeout(PATIENCE, client.next_event_named("match.update"))
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} events arrived", seen.len()))
            .unwrap();
        let (offset, epoch) = position_of(&event);
        seen.push((offset, epoch, event["data"]["score"].as_u64().unwrap()));
    }
    seen
}

/// No further `match.update` arrives (announcements of joins and leaves may).
async fn expect_no_more_scores(client: &mut Client) {
    let next = tokio::time::timeout(
        Duration::from_millis(300),
        client.next_event_named("match.update"),
    )
    .await;
    assert!(next.is_err(), "an unexpected event: {next:?}");
}

async fn join_since(client: &mut Client, room: &str, since: Option<(u64, &str)>) -> Value {
    let mut request = json!({"op":"join","room":room});
    if let Some((offset, epoch)) = since {
        request["since"] = json!({"offset":offset,"epoch":epoch});
    }
    client.ok(request, 7).await.unwrap()
}

async fn member(server: &TestServer, user: &str) -> Client {
    server
        .connect_with_rooms(user, &["competition:*"])
        .await
        .unwrap()
}

#[tokio::test]
async fn a_reconnecting_client_gets_exactly_the_events_it_missed_then_live_ones() {
    let server = TestServer::start().await.unwrap();
    let room = unique("competition:h");
    let mut phone = member(&server, "ana").await;
    let joined = join_since(&mut phone, &room, None).await;
    let (start, epoch) = position_of(&joined);
    assert_eq!(start, 0, "a new room has no events yet");
    assert!(joined.get("recovered").is_none(), "no since, no recovered");

    publish_scores(&server, &room, 0..2).await;
    let received = scores(&mut phone, 2).await;
    assert_eq!(
        received,
        vec![(1, epoch.clone(), 0), (2, epoch.clone(), 1)],
        "pushes carry consecutive offsets in the room's epoch"
    );
    phone.close().await.unwrap();

    publish_scores(&server, &room, 2..52).await;
    let mut phone = member(&server, "ana").await;
    let joined = join_since(&mut phone, &room, Some((2, &epoch))).await;
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(position_of(&joined), (52, epoch.clone()));
    let replayed = scores(&mut phone, 50).await;
    let expected: Vec<(u64, String, u64)> = (3..=52)
        .map(|offset| (offset, epoch.clone(), offset - 1))
        .collect();
    assert_eq!(replayed, expected, "exactly the 50 missed, in order");

    publish_scores(&server, &room, 52..53).await;
    assert_eq!(
        scores(&mut phone, 1).await,
        vec![(53, epoch, 52)],
        "then live"
    );
    expect_no_more_scores(&mut phone).await;
}

#[tokio::test]
async fn live_events_during_a_replay_are_neither_lost_nor_doubled() {
    let server = TestServer::start().await.unwrap();
    let room = unique("competition:race");
    let mut phone = member(&server, "ben").await;
    let (_, epoch) = position_of(&join_since(&mut phone, &room, None).await);

    let total = 300;
    let publishing = {
        let (addr, room) = (server.addr, room.clone());
        let key = server.settings.api.key.clone().unwrap();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for score in 0..total {
                let response = http
                    .post(format!("http://{addr}/api/publish"))
                    .header("X-API-Key", &key)
                    .json(&json!({"room":room,"event":"match.update","data":{"score":score}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                // A match's pace, quicker than a phone reconnects: the replay and live events
                // overlap, and a reconnect never misses more than the room keeps.
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    // Reconnect three times while events keep coming: each time the replay and the live events
    // that arrive during it must join up with no gap and no duplicate.
    let mut offsets = Vec::new();
    for _ in 0..3 {
        let before = scores(&mut phone, 20).await;
        offsets.extend(before.iter().map(|(offset, _, _)| *offset));
        let last = *offsets.last().unwrap();
        phone.close().await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        phone = member(&server, "ben").await;
        let joined = join_since(&mut phone, &room, Some((last, &epoch))).await;
        assert_eq!(joined["recovered"], true, "{joined}");
    }
    publishing.await.unwrap();
    let last = *offsets.last().unwrap();
    let rest = scores(&mut phone, (total - last) as usize).await;
    offsets.extend(rest.iter().map(|(offset, _, _)| *offset));
    assert_eq!(
        offsets,
        (1..=total).collect::<Vec<u64>>(),
        "every event once, in order, across three reconnects"
    );
    expect_no_more_scores(&mut phone).await;
}

#[tokio::test]
async fn positions_that_cannot_be_served_say_recovered_false() {
    let server = TestServer::start().await.unwrap();
    let room = unique("competition:old");
    let mut phone = member(&server, "cy").await;
    let (_, epoch) = position_of(&join_since(&mut phone, &room, None).await);
    // competition keeps 100 events: offset 5 would need 6..=120, and 6..=20 are gone.
    publish_scores(&server, &room, 0..120).await;
    phone.close().await.unwrap();

    let mut phone = member(&server, "cy").await;
    let too_old = join_since(&mut phone, &room, Some((5, &epoch))).await;
    assert_eq!(
        too_old["recovered"], false,
        "older than the window: {too_old}"
    );
    assert_eq!(
        position_of(&too_old),
        (120, epoch.clone()),
        "and where the room is"
    );
    expect_no_more_scores(&mut phone).await;

    let other = unique("competition:other");
    let wrong_epoch = join_since(&mut phone, &other, Some((0, &epoch))).await;
    assert_eq!(
        wrong_epoch["recovered"], false,
        "another epoch: {wrong_epoch}"
    );

    let chat = unique("chat:nohistory");
    let history_off = join_since(&mut phone, &chat, Some((3, &epoch))).await;
    assert_eq!(
        history_off["recovered"], false,
        "history off: {history_off}"
    );
    assert!(
        history_off.get("offset").is_none(),
        "chat pushes carry no position"
    );

    let ahead = unique("competition:ahead");
    let (_, ahead_epoch) = position_of(&join_since(&mut phone, &ahead, None).await);
    let mut other_phone = member(&server, "cy2").await;
    let future = join_since(&mut other_phone, &ahead, Some((9, &ahead_epoch))).await;
    assert_eq!(future["recovered"], false, "ahead of the room: {future}");
}

#[tokio::test]
async fn the_history_op_gives_a_late_joiner_the_last_events_under_the_join_rules() {
    let server = TestServer::start().await.unwrap();
    let room = unique("competition:late");
    publish_scores(&server, &room, 0..3).await;
    let mut late = member(&server, "dee").await;
    let reply = late
        .ok(json!({"op":"history","room":room,"limit":2}), 3)
        .await
        .unwrap();
    let events = reply["events"].as_array().unwrap();
    let shown: Vec<(u64, u64)> = events
        .iter()
        .map(|event| {
            (
                event["offset"].as_u64().unwrap(),
                event["data"]["score"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(shown, vec![(2, 1), (3, 2)], "the last two, oldest first");
    assert_eq!(reply["offset"], 3);
    assert_eq!(events[0]["event"], "match.update");
    assert_eq!(events[0]["room"], room.as_str());

    let mut outsider = server.connect("eve").await.unwrap();
    let refused = outsider
        .error_code(json!({"op":"history","room":room}), 4)
        .await
        .unwrap();
    assert_eq!(refused, "room_forbidden", "claims rooms need the claim");
    let off = outsider
        .error_code(json!({"op":"history","room":unique("chat:x")}), 5)
        .await
        .unwrap();
    assert_eq!(off, "history_disabled");
    let bad = outsider
        .error_code(
            json!({"op":"join","room":"chat:a","since":{"offset":"x"}}),
            6,
        )
        .await
        .unwrap();
    assert_eq!(bad, "invalid_request", "a malformed since is refused");
}

async fn two_nodes(settings: &realtime_core::config::Settings) -> (TestServer, TestServer) {
    let first = TestServer::start_node(settings)
        .await
        .expect("node A (needs redis and nats)");
    let second = TestServer::start_node(settings).await.expect("node B");
    (first, second)
}

#[tokio::test]
async fn a_client_of_node_a_recovers_through_node_b_what_node_b_published() {
    let settings = cluster_settings(REDIS_URL, NATS_URL);
    let (node_a, node_b) = two_nodes(&settings).await;
    let room = unique("competition:cluster");
    let mut phone = member(&node_a, "fay").await;
    let mut watcher = member(&node_b, "gus").await;
    let (_, epoch) = position_of(&join_since(&mut phone, &room, None).await);
    join_since(&mut watcher, &room, None).await;
    publish_scores(&node_b, &room, 0..3).await;
    assert_eq!(scores(&mut phone, 3).await.last().unwrap().0, 3);
    phone.close().await.unwrap();

    publish_scores(&node_b, &room, 3..53).await;
    let mut phone = member(&node_b, "fay").await;
    let joined = join_since(&mut phone, &room, Some((3, &epoch))).await;
    assert_eq!(joined["recovered"], true, "{joined}");
    let replayed = scores(&mut phone, 50).await;
    let expected: Vec<(u64, String, u64)> = (4..=53)
        .map(|offset| (offset, epoch.clone(), offset - 1))
        .collect();
    assert_eq!(
        replayed, expected,
        "the 50 missed, in order, from the other node"
    );
    publish_scores(&node_a, &room, 53..54).await;
    assert_eq!(
        scores(&mut phone, 1).await[0].0,
        54,
        "then live, published on node A"
    );
    let seen_by_watcher = scores(&mut watcher, 54).await;
    assert_eq!(
        seen_by_watcher
            .iter()
            .map(|(offset, _, _)| *offset)
            .collect::<Vec<_>>(),
        (1..=54).collect::<Vec<u64>>(),
        "a member who stayed saw every offset once"
    );
}

#[tokio::test]
async fn two_nodes_publishing_into_one_room_at_once_give_contiguous_offsets() {
    let settings = cluster_settings(REDIS_URL, NATS_URL);
    let (node_a, node_b) = two_nodes(&settings).await;
    let room = unique("competition:both");
    let mut on_a = member(&node_a, "hal").await;
    let mut on_b = member(&node_b, "ivy").await;
    join_since(&mut on_a, &room, None).await;
    join_since(&mut on_b, &room, None).await;
    let (from_a, from_b) = tokio::join!(
        publish_scores(&node_a, &room, 0..100),
        publish_scores(&node_b, &room, 100..200),
    );
    let ((), ()) = (from_a, from_b);
    for client in [&mut on_a, &mut on_b] {
        let seen = scores(client, 200).await;
        let epoch = &seen[0].1;
        assert!(seen.iter().all(|(_, e, _)| e == epoch), "one epoch");
        let mut offsets: Vec<u64> = seen.iter().map(|(offset, _, _)| *offset).collect();
        offsets.sort_unstable();
        assert_eq!(offsets, (1..=200).collect::<Vec<u64>>(), "each offset once");
        let mut by_score: Vec<u64> = seen.iter().map(|(_, _, score)| *score).collect();
        by_score.sort_unstable();
        assert_eq!(by_score, (0..200).collect::<Vec<u64>>(), "each event once");
        expect_no_more_scores(client).await;
    }
}

#[tokio::test]
async fn a_killed_and_restarted_node_serves_the_same_history() {
    let settings = cluster_settings(REDIS_URL, NATS_URL);
    let room = unique("competition:restart");
    let mut node = KillableNode::start(&settings).unwrap();
    let token = realtime_tests::sign_hs256(
        settings.auth.jwt_secret.as_deref().unwrap(),
        json!({"sub":"jo","exp":realtime_core::auth::unix_now_secs() + 600,"rooms":["competition:*"]}),
    );
    let mut phone = Client::connect(&node.ws_url(&token)).await.unwrap();
    let (_, epoch) = position_of(&join_since(&mut phone, &room, None).await);
    let service = async_nats::connect(NATS_URL).await.unwrap();
    let subject = format!("{}.room.{room}", settings.nats.subject_prefix);
    for score in 0..10 {
        let body = json!({"event":"match.update","data":{"score":score}}).to_string();
        let reply = service.request(subject.clone(), body.into()).await.unwrap();
        let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(reply["ok"], true, "{reply}");
    }
    assert_eq!(scores(&mut phone, 4).await.last().unwrap().0, 4);
    node.kill();
    drop(phone);

    let restarted = KillableNode::start(&settings).unwrap();
    let mut phone = Client::connect(&restarted.ws_url(&token)).await.unwrap();
    let joined = join_since(&mut phone, &room, Some((4, &epoch))).await;
    assert_eq!(joined["recovered"], true, "{joined}");
    let replayed: Vec<u64> = scores(&mut phone, 6)
        .await
        .iter()
        .map(|(offset, _, _)| *offset)
        .collect();
    assert_eq!(replayed, (5..=10).collect::<Vec<u64>>());
}

#[tokio::test]
async fn with_jetstream_stopped_live_delivery_goes_on_and_recovery_says_false() {
    let mut nats = ServiceProcess::nats(0).await.unwrap();
    let nats_url = format!("nats://127.0.0.1:{}", nats.port);
    let settings = cluster_settings(REDIS_URL, &nats_url);
    let (node_a, node_b) = two_nodes(&settings).await;
    let room = unique("competition:nojs");
    let mut on_a = member(&node_a, "kim").await;
    let mut on_b = member(&node_b, "lou").await;
    let (_, epoch) = position_of(&join_since(&mut on_a, &room, None).await);
    join_since(&mut on_b, &room, None).await;
    publish_scores(&node_a, &room, 0..2).await;
    assert_eq!(scores(&mut on_b, 2).await.last().unwrap().0, 2);
    assert_eq!(scores(&mut on_a, 2).await.last().unwrap().0, 2);

    // The NATS server comes back without JetStream: core NATS (live delivery) works, history
    // does not.
    nats.kill();
    let _plain = ServiceProcess::nats_without_jetstream_on(nats.port)
        .await
        .unwrap();
    // Publish until a member on each node has received an event published without JetStream:
    // each node's NATS connection comes back on its own schedule, and an event published before
    // a node resubscribed is not delivered there (live delivery is at most once).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut received = [false, false];
    let mut attempt = 0;
    while !(received[0] && received[1]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "live delivery resumes on both nodes without JetStream: {received:?}"
        );
        attempt += 1;
        let _ = node_b
            .publish(json!({"room":room,"event":"match.update","data":{"score":1000 + attempt}}))
            .await;
        for (index, client) in [&mut on_a, &mut on_b].into_iter().enumerate() {
            if received[index] {
                continue;
            }
            let next = tokio::time::timeout(
                Duration::from_millis(300),
                client.next_event_named("match.update"),
            )
            .await;
            if let Ok(Ok(event)) = next
                && event["data"]["score"].as_u64().unwrap() >= 1000
            {
                assert!(
                    event.get("offset").is_none(),
                    "delivered without a position: {event}"
                );
                received[index] = true;
            }
        }
    }
    let mut returning = member(&node_a, "kim").await;
    let joined = join_since(&mut returning, &room, Some((2, &epoch))).await;
    assert_eq!(joined["recovered"], false, "{joined}");
}
