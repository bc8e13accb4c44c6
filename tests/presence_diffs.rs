//! Batched presence announcements (`announce = "batched"`): joins and leaves reach the members as
//! one `room.presence_diff` per interval and node, on one node and across a cluster.

use std::collections::BTreeSet;
use std::time::Duration;

use realtime_core::config::{Announce, Settings};
use realtime_tests::{Client, NATS_URL, REDIS_URL, TestServer, cluster_settings, unique};
use serde_json::{Value, json};

/// Long enough that a test's few joins or leaves in a row fall into one interval even on a busy
/// CI machine, short enough to keep the tests quick.
const INTERVAL_MS: u64 = 1000;

/// A room type `lobby` that batches its announcements.
fn with_batched_lobby(settings: &mut Settings) {
    let mut lobby = settings.room_types["chat"].clone();
    lobby.presence = true;
    lobby.announce = Some(Announce::Batched);
    lobby.announce_interval_ms = INTERVAL_MS;
    lobby.capacity = 100;
    settings.room_types.insert("lobby".into(), lobby);
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("a list of user ids")
        .iter()
        .map(|user| user.as_str().expect("a user id").to_owned())
        .collect()
}

/// The next push, which must be a diff of `room`: (joins, leaves).
async fn next_diff(client: &mut Client, room: &str) -> (Vec<String>, Vec<String>) {
    let event = client.next_event().await.unwrap();
    assert_eq!(
        event["event"], "room.presence_diff",
        "unexpected push {event}"
    );
    assert_eq!(event["room"], room);
    (
        names(&event["data"]["joins"]),
        names(&event["data"]["leaves"]),
    )
}

fn set(users: &[&str]) -> BTreeSet<String> {
    users.iter().map(|user| user.to_string()).collect()
}

/// Reads diffs until the member has seen exactly these users join and leave (applied in order),
/// or fails on anything else.
async fn read_diffs_until(
    client: &mut Client,
    room: &str,
    present: &mut BTreeSet<String>,
    expected: &BTreeSet<String>,
) {
    while present != expected {
        let (joins, leaves) = tokio::time::timeout(
            Duration::from_millis(INTERVAL_MS * 5),
            next_diff(client, room),
        )
        .await
        .unwrap_or_else(|_| panic!("no diff brought {present:?} to {expected:?}"));
        present.extend(joins);
        for user in leaves {
            present.remove(&user);
        }
    }
}

#[tokio::test]
async fn joins_and_leaves_of_one_interval_reach_members_as_one_sorted_diff() {
    let server = TestServer::start_with(with_batched_lobby).await.unwrap();
    let room = unique("lobby:storm");
    let mut alice = server.connect("alice").await.unwrap();
    alice.join(&room).await.unwrap();
    let mut others = Vec::new();
    for user in ["dave", "bob", "carol"] {
        let mut client = server.connect(user).await.unwrap();
        client.join(&room).await.unwrap();
        others.push(client);
    }
    // One frame for the four joins, not one `room.user_joined` each.
    let (joins, leaves) = next_diff(&mut alice, &room).await;
    assert_eq!(joins, ["alice", "bob", "carol", "dave"]);
    assert!(leaves.is_empty());
    let mut dave = others.remove(0);
    assert_eq!(next_diff(&mut dave, &room).await.0.len(), 4);

    // Two close their sockets, one leaves the room: again one frame, to those still in it.
    for client in others {
        client.close().await.unwrap();
    }
    dave.ok(json!({"op":"leave","room":room}), 9).await.unwrap();
    let (joins, leaves) = next_diff(&mut alice, &room).await;
    assert!(joins.is_empty());
    assert_eq!(leaves, ["bob", "carol", "dave"]);
    dave.expect_silence(Duration::from_millis(INTERVAL_MS * 2))
        .await
        .unwrap();
    let presence = alice
        .ok(json!({"op":"presence","room":room}), 10)
        .await
        .unwrap();
    assert_eq!(presence["members"], json!(["alice"]));
}

#[tokio::test]
async fn a_user_who_joins_and_leaves_within_an_interval_is_never_announced() {
    let server = TestServer::start_with(with_batched_lobby).await.unwrap();
    let room = unique("lobby:brief");
    let mut alice = server.connect("alice").await.unwrap();
    alice.join(&room).await.unwrap();
    assert_eq!(next_diff(&mut alice, &room).await.0, ["alice"]);

    let mut eve = server.connect("eve").await.unwrap();
    eve.join(&room).await.unwrap();
    eve.ok(json!({"op":"leave","room":room}), 3).await.unwrap();
    let mut frank = server.connect("frank").await.unwrap();
    frank.join(&room).await.unwrap();
    let (joins, leaves) = next_diff(&mut alice, &room).await;
    assert_eq!(joins, ["frank"], "eve came and went within the interval");
    assert!(leaves.is_empty());
}

#[tokio::test]
async fn batched_rooms_push_no_per_change_announcements_and_other_types_keep_them() {
    let server = TestServer::start_with(with_batched_lobby).await.unwrap();
    let lobby = unique("lobby:mixed");
    let chat = unique("chat:mixed");
    let mut alice = server.connect("alice").await.unwrap();
    let mut bob = server.connect("bob").await.unwrap();
    alice.join(&lobby).await.unwrap();
    alice.join(&chat).await.unwrap();
    bob.join(&chat).await.unwrap();
    bob.join(&lobby).await.unwrap();
    // `chat` announces each change (its shipped default), at once: alice's own join, then bob's.
    for user in ["alice", "bob"] {
        let joined = alice.next_event().await.unwrap();
        assert_eq!(joined["event"], "room.user_joined");
        assert_eq!(joined["room"], chat.as_str());
        assert_eq!(joined["data"]["userId"], user);
    }
    let (joins, _) = next_diff(&mut alice, &lobby).await;
    assert_eq!(joins, ["alice", "bob"]);
}

#[tokio::test]
async fn members_on_every_node_see_every_nodes_joins_and_a_drained_nodes_leaves() {
    let mut settings = cluster_settings(REDIS_URL, NATS_URL);
    with_batched_lobby(&mut settings);
    let node_a = TestServer::start_node(&settings)
        .await
        .expect("node A (needs redis and nats)");
    let node_b = TestServer::start_node(&settings).await.expect("node B");
    let room = unique("lobby:cluster");

    let (mut members_a, mut members_b) = (Vec::new(), Vec::new());
    for user in ["a1", "a2", "a3"] {
        let mut client = node_a.connect(user).await.unwrap();
        client.join(&room).await.unwrap();
        members_a.push(client);
    }
    for user in ["b1", "b2"] {
        let mut client = node_b.connect(user).await.unwrap();
        client.join(&room).await.unwrap();
        members_b.push(client);
    }
    // Every member applies the diffs of both nodes and ends with the whole room.
    let everyone = set(&["a1", "a2", "a3", "b1", "b2"]);
    for client in members_a.iter_mut().chain(members_b.iter_mut()) {
        let mut present = BTreeSet::new();
        read_diffs_until(client, &room, &mut present, &everyone).await;
    }
    let presence = members_b[0]
        .ok(json!({"op":"presence","room":room}), 20)
        .await
        .unwrap();
    assert_eq!(presence["members"], json!(["a1", "a2", "a3", "b1", "b2"]));

    // Node B drains: its members' leaves still go out, after their sockets are gone.
    let shutdown = tokio::spawn(node_b.server.shutdown());
    for client in &mut members_b {
        client.expect_end().await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .unwrap()
        .unwrap();
    let staying = set(&["a1", "a2", "a3"]);
    for client in &mut members_a {
        let mut present = everyone.clone();
        read_diffs_until(client, &room, &mut present, &staying).await;
    }
    let presence = members_a[0]
        .ok(json!({"op":"presence","room":room}), 21)
        .await
        .unwrap();
    assert_eq!(presence["members"], json!(["a1", "a2", "a3"]));
}
