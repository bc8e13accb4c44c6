//! Conformance suites for the backend traits: one suite per trait, run against every backend.
//!
//! Each suite takes a factory that makes one more "node" attached to the same backend, so the
//! cross-node guarantees are tested too. Names are random per run, so suites can share a real
//! Redis or NATS with other tests. A failed guarantee panics with the guarantee's name.

pub mod history;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::notifications::{Cursor, NewNotification, NotificationStore};
use crate::protocol::Frame;
use crate::room::RoomId;
use crate::stores::{
    Arrival, Broker, DeliveryHandler, JoinOutcome, LeaveOutcome, Member, PresenceStore,
    RateDecision, RateLimiter, RoomStore, SocketEntry, Topic,
};

/// How long a networked backend may take to deliver before the suite calls it lost.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(5);
/// How long the suite waits to be sure something that must not arrive does not.
const SILENCE_WINDOW: Duration = Duration::from_millis(300);

fn unique(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::random::<u64>())
}

fn frame(text: &str) -> Frame {
    Frame::from_encoded(Bytes::copy_from_slice(text.as_bytes())).expect("suite frames are text")
}

/// A delivery handler that forwards into a channel the suite reads.
fn recording_handler() -> (DeliveryHandler, mpsc::UnboundedReceiver<(Topic, Frame)>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let handler: DeliveryHandler = Arc::new(move |topic: &Topic, frame: Frame| {
        let _ = sender.send((topic.clone(), frame));
    });
    (handler, receiver)
}

async fn expect_frame(
    receiver: &mut mpsc::UnboundedReceiver<(Topic, Frame)>,
    guarantee: &str,
) -> (Topic, Frame) {
    tokio::time::timeout(DELIVERY_DEADLINE, receiver.recv())
        .await
        .unwrap_or_else(|_| panic!("{guarantee}: nothing delivered within {DELIVERY_DEADLINE:?}"))
        .expect("handler channel closed")
}

async fn expect_silence(receiver: &mut mpsc::UnboundedReceiver<(Topic, Frame)>, guarantee: &str) {
    if let Ok(Some((topic, frame))) = tokio::time::timeout(SILENCE_WINDOW, receiver.recv()).await {
        panic!("{guarantee}: unexpected delivery on {topic:?}: {frame:?}");
    }
}

/// The `Broker` guarantees. `make_node` attaches one more node to the shared backend.
pub async fn broker_suite<F, Fut>(make_node: F)
where
    F: Fn(DeliveryHandler) -> Fut,
    Fut: Future<Output = Arc<dyn Broker>>,
{
    let (handler_a, mut received_a) = recording_handler();
    let (handler_b, mut received_b) = recording_handler();
    let node_a = make_node(handler_a).await;
    let node_b = make_node(handler_b).await;
    let room = Topic::Room(RoomId::parse(&unique("chat:conf")).unwrap());
    let other_room = Topic::Room(RoomId::parse(&unique("chat:conf")).unwrap());
    let user = Topic::User(Arc::from(unique("user-")));

    // Subscribing twice must still deliver once.
    node_b.subscribe(&room).await.expect("subscribe");
    node_b
        .subscribe(&room)
        .await
        .expect("subscribe is idempotent");
    node_b.subscribe(&user).await.expect("subscribe user topic");

    for sequence in 0..50 {
        let body = format!("{{\"n\":{sequence}}}");
        node_a.publish(&room, frame(&body)).await.expect("publish");
    }
    for sequence in 0..50 {
        let (topic, delivered) =
            expect_frame(&mut received_b, "delivery to a subscribed node").await;
        assert_eq!(topic, room, "delivery carries its topic");
        assert_eq!(
            delivered.bytes().as_ref(),
            format!("{{\"n\":{sequence}}}").as_bytes(),
            "frames arrive exactly once, byte for byte, in publish order"
        );
    }
    expect_silence(&mut received_b, "exactly once (no duplicates)").await;
    expect_silence(&mut received_a, "an unsubscribed node receives nothing").await;

    node_a
        .publish(&other_room, frame("{\"other\":true}"))
        .await
        .expect("publish");
    expect_silence(&mut received_b, "topics are isolated").await;

    node_a
        .publish(&user, frame("{\"to\":\"user\"}"))
        .await
        .expect("publish to user");
    let (topic, delivered) = expect_frame(&mut received_b, "user topic delivery").await;
    assert_eq!(topic, user);
    assert_eq!(delivered.bytes().as_ref(), b"{\"to\":\"user\"}");

    // A publisher that is itself subscribed receives its own frames too.
    node_a.subscribe(&room).await.expect("subscribe");
    node_a
        .publish(&room, frame("{\"both\":1}"))
        .await
        .expect("publish");
    expect_frame(&mut received_a, "publisher subscribed to its own topic").await;
    expect_frame(&mut received_b, "second subscriber").await;

    node_b.unsubscribe(&room).await.expect("unsubscribe");
    node_b
        .unsubscribe(&room)
        .await
        .expect("unsubscribe is idempotent");
    node_a
        .publish(&room, frame("{\"after\":1}"))
        .await
        .expect("publish");
    expect_frame(&mut received_a, "remaining subscriber still receives").await;
    expect_silence(&mut received_b, "no delivery after unsubscribe").await;
}

fn socket(user_id: &str, socket_id: &str, node_id: &str) -> SocketEntry {
    SocketEntry {
        user_id: Arc::from(user_id),
        socket_id: Arc::from(socket_id),
        node_id: Arc::from(node_id),
    }
}

async fn offline_among(store: &dyn PresenceStore, users: &[&str]) -> Vec<String> {
    let mut taken: Vec<String> = store
        .take_offline()
        .await
        .expect("take_offline")
        .into_iter()
        .filter(|user| users.contains(&user.as_str()))
        .collect();
    taken.sort();
    taken
}

/// The `PresenceStore` guarantees, on the real clock (TTLs of a few hundred milliseconds).
pub async fn presence_suite<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn PresenceStore>>,
{
    let node_a = make_node().await;
    let node_b = make_node().await;
    let ttl = Duration::from_millis(600);
    let alice = unique("alice-");
    let bob = unique("bob-");
    let users = [alice.as_str(), bob.as_str()];

    let first = socket(&alice, "s1", "node-a");
    let second = socket(&alice, "s2", "node-b");
    assert_eq!(
        node_a.connect(&first, ttl).await.unwrap(),
        Arrival::CameOnline,
        "first socket brings the user online"
    );
    assert_eq!(
        node_b.connect(&second, ttl).await.unwrap(),
        Arrival::AlreadyOnline,
        "second socket on another node does not"
    );
    let listed = node_a.sockets_of(&alice).await.unwrap();
    assert_eq!(
        listed,
        vec![first.clone(), second.clone()],
        "sockets_of lists live sockets with their nodes"
    );

    node_b.disconnect(&second).await.unwrap();
    assert_eq!(
        node_a.sockets_of(&alice).await.unwrap(),
        vec![first.clone()],
        "disconnect removes the socket"
    );

    // Heartbeats keep the user online well past one TTL.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        node_a.heartbeat(&first, ttl).await.unwrap();
        assert!(
            offline_among(node_b.as_ref(), &users).await.is_empty(),
            "heartbeat keeps the user online"
        );
    }

    // After the last socket leaves, the user is online until the TTL runs out, then offline once.
    node_a.disconnect(&first).await.unwrap();
    assert!(
        offline_among(node_a.as_ref(), &users).await.is_empty(),
        "online until the TTL runs out"
    );
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let (from_a, from_b) = tokio::join!(
        offline_among(node_a.as_ref(), &users),
        offline_among(node_b.as_ref(), &users)
    );
    let mut all: Vec<String> = from_a.into_iter().chain(from_b).collect();
    all.sort();
    assert_eq!(
        all,
        vec![alice.clone()],
        "each offline user is taken exactly once across nodes"
    );
    assert!(
        offline_among(node_a.as_ref(), &users).await.is_empty(),
        "taken users are removed"
    );

    // A silent socket (no heartbeat) goes offline too, even without a disconnect.
    let silent = socket(&bob, "s3", "node-a");
    assert_eq!(
        node_a.connect(&silent, ttl).await.unwrap(),
        Arrival::CameOnline
    );
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert_eq!(
        offline_among(node_b.as_ref(), &users).await,
        vec![bob.clone()],
        "expired sockets do not keep a user online"
    );
    assert!(
        node_a.sockets_of(&bob).await.unwrap().is_empty(),
        "expired sockets are not listed"
    );

    // A heartbeat after being taken offline brings the user back online.
    assert_eq!(
        node_a.heartbeat(&silent, ttl).await.unwrap(),
        Arrival::CameOnline,
        "heartbeat after offline is a new arrival"
    );
    node_a.disconnect(&silent).await.unwrap();

    concurrent_calls_behave_as_if_one_at_a_time(&node_a, &node_b, ttl).await;
    nodes_lists_the_nodes_announced_within_their_ttl(&node_a, &node_b).await;
}

/// `nodes` lists each node whose latest announcement is within its ttl, from any node, sorted.
async fn nodes_lists_the_nodes_announced_within_their_ttl(
    node_a: &Arc<dyn PresenceStore>,
    node_b: &Arc<dyn PresenceStore>,
) {
    let status = |node_id: &str, connections: u64| crate::stores::NodeStatus {
        node_id: node_id.to_owned(),
        connections,
        version: "test".to_owned(),
        announced_at_ms: crate::protocol::unix_now_millis(),
    };
    let (a, b) = (unique("node-a-"), unique("node-b-"));
    node_a
        .announce_node(&status(&a, 3), Duration::from_secs(30))
        .await
        .unwrap();
    node_b
        .announce_node(&status(&b, 5), Duration::from_millis(300))
        .await
        .unwrap();
    node_a
        .announce_node(&status(&a, 4), Duration::from_secs(30))
        .await
        .unwrap();
    let listed = |nodes: Vec<crate::stores::NodeStatus>| -> Vec<(String, u64)> {
        nodes
            .into_iter()
            .filter(|node| node.node_id == a || node.node_id == b)
            .map(|node| (node.node_id, node.connections))
            .collect()
    };
    assert_eq!(
        listed(node_b.nodes().await.unwrap()),
        vec![(a.clone(), 4), (b.clone(), 5)],
        "the latest announcement of each node, from any node"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        listed(node_a.nodes().await.unwrap()),
        vec![(a.clone(), 4)],
        "a node that stopped announcing drops out after its ttl"
    );
}

/// Connects and heartbeats made at once (a backend may send them as one batch) behave as if made
/// one at a time: of many sockets of a few users connecting together, exactly one per user
/// brings the user online, and every socket is recorded on its own node.
async fn concurrent_calls_behave_as_if_one_at_a_time(
    node_a: &Arc<dyn PresenceStore>,
    node_b: &Arc<dyn PresenceStore>,
    ttl: Duration,
) {
    let users: Vec<String> = (0..4).map(|_| unique("crowd-")).collect();
    let sockets: Vec<SocketEntry> = (0..40)
        .map(|number| {
            let node_id = if number % 2 == 0 { "node-a" } else { "node-b" };
            socket(
                &users[number % users.len()],
                &format!("c{number:02}"),
                node_id,
            )
        })
        .collect();
    let node_of = |entry: &SocketEntry| {
        if &*entry.node_id == "node-a" {
            node_a
        } else {
            node_b
        }
    };
    let arrivals = futures_util::future::join_all(
        sockets
            .iter()
            .map(|entry| node_of(entry).connect(entry, ttl)),
    )
    .await;
    for user in &users {
        let came_online = sockets
            .iter()
            .zip(&arrivals)
            .filter(|(entry, _)| *entry.user_id == **user)
            .filter(|(_, arrival)| *arrival.as_ref().unwrap() == Arrival::CameOnline)
            .count();
        assert_eq!(
            came_online, 1,
            "concurrent connects bring each user online exactly once"
        );
    }
    let heartbeats = futures_util::future::join_all(
        sockets
            .iter()
            .map(|entry| node_of(entry).heartbeat(entry, ttl)),
    )
    .await;
    assert!(
        heartbeats
            .iter()
            .all(|arrival| *arrival.as_ref().unwrap() == Arrival::AlreadyOnline),
        "concurrent heartbeats of online users are no arrivals"
    );
    for user in &users {
        let mut listed = node_a.sockets_of(user).await.unwrap();
        listed.sort_by(|left, right| left.socket_id.cmp(&right.socket_id));
        let expected: Vec<SocketEntry> = sockets
            .iter()
            .filter(|entry| *entry.user_id == **user)
            .cloned()
            .collect();
        assert_eq!(
            listed, expected,
            "each concurrent connect recorded its socket and node"
        );
    }
    for entry in &sockets {
        node_of(entry).disconnect(entry).await.unwrap();
    }
}

/// Membership TTL the room suite uses where expiry is not under test.
const LONG_TTL: Duration = Duration::from_secs(60);

/// The `RoomStore` guarantees.
pub async fn room_suite<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn RoomStore>>,
{
    let node_a = make_node().await;
    let node_b = make_node().await;
    let room = RoomId::parse(&unique("chat:conf")).unwrap();
    let member = |user: &str, socket: &str| Member {
        user_id: Arc::from(user),
        socket_id: Arc::from(socket),
    };

    let joined_first = JoinOutcome::Joined {
        first_for_user: true,
    };
    assert_eq!(
        node_a
            .join(&room, &member("u1", "s1"), 2, LONG_TTL)
            .await
            .unwrap(),
        joined_first
    );
    assert_eq!(
        node_b
            .join(&room, &member("u2", "s2"), 2, LONG_TTL)
            .await
            .unwrap(),
        joined_first
    );
    assert_eq!(
        node_a
            .join(&room, &member("u3", "s3"), 2, LONG_TTL)
            .await
            .unwrap(),
        JoinOutcome::Full,
        "capacity counts users across nodes"
    );
    assert_eq!(
        node_b
            .join(&room, &member("u1", "s4"), 2, LONG_TTL)
            .await
            .unwrap(),
        JoinOutcome::Joined {
            first_for_user: false
        },
        "a member's second socket joins a full room"
    );
    assert_eq!(
        node_a
            .join(&room, &member("u1", "s1"), 2, LONG_TTL)
            .await
            .unwrap(),
        JoinOutcome::AlreadyMember
    );
    assert_eq!(
        node_b.members(&room).await.unwrap(),
        vec!["u1".to_owned(), "u2".to_owned()],
        "members are distinct and sorted"
    );

    assert_eq!(
        node_a.leave(&room, &member("u1", "s1")).await.unwrap(),
        LeaveOutcome::Left {
            last_for_user: false
        }
    );
    assert_eq!(
        node_a.leave(&room, &member("u1", "s4")).await.unwrap(),
        LeaveOutcome::Left {
            last_for_user: true
        }
    );
    assert_eq!(
        node_a.leave(&room, &member("u1", "s4")).await.unwrap(),
        LeaveOutcome::NotMember
    );
    assert_eq!(
        node_a.leave(&room, &member("nobody", "s9")).await.unwrap(),
        LeaveOutcome::NotMember
    );
    assert_eq!(node_a.members(&room).await.unwrap(), vec!["u2".to_owned()]);
    assert_eq!(
        node_a
            .join(&room, &member("u3", "s3"), 2, LONG_TTL)
            .await
            .unwrap(),
        joined_first,
        "a freed place can be taken"
    );

    // Concurrent joins from two nodes never overfill a room.
    let crowded = RoomId::parse(&unique("chat:crowd")).unwrap();
    let attempts = (0..40).map(|index| {
        let store = if index % 2 == 0 {
            node_a.clone()
        } else {
            node_b.clone()
        };
        let crowded = crowded.clone();
        let candidate = member(&format!("user{index}"), &format!("sock{index}"));
        tokio::spawn(async move {
            store
                .join(&crowded, &candidate, 10, LONG_TTL)
                .await
                .unwrap()
        })
    });
    let mut joined = 0;
    for attempt in attempts.collect::<Vec<_>>() {
        if attempt.await.unwrap() == joined_first {
            joined += 1;
        }
    }
    assert_eq!(
        joined, 10,
        "exactly capacity joins succeed under concurrency"
    );
    assert_eq!(node_a.members(&crowded).await.unwrap().len(), 10);

    // Memberships that are not refreshed expire: they stop counting and are not listed.
    let short_ttl = Duration::from_millis(600);
    let expiring = RoomId::parse(&unique("chat:ttl")).unwrap();
    let kept = member("kept", "s-kept");
    let ghost = member("ghost", "s-ghost");
    assert_eq!(
        node_a.join(&expiring, &kept, 2, short_ttl).await.unwrap(),
        joined_first
    );
    assert_eq!(
        node_b.join(&expiring, &ghost, 2, short_ttl).await.unwrap(),
        joined_first
    );
    assert_eq!(
        node_a
            .join(&expiring, &member("third", "s-third"), 2, short_ttl)
            .await
            .unwrap(),
        JoinOutcome::Full
    );
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let gone = node_a
            .refresh(std::slice::from_ref(&expiring), &kept, short_ttl)
            .await
            .unwrap();
        assert!(
            gone.is_empty(),
            "a live membership is extended, not reported"
        );
    }
    assert_eq!(
        node_b.members(&expiring).await.unwrap(),
        vec!["kept".to_owned()],
        "unrefreshed memberships expire; refreshed ones stay"
    );
    assert_eq!(
        node_b
            .join(&expiring, &member("third", "s-third"), 2, short_ttl)
            .await
            .unwrap(),
        joined_first,
        "an expired membership frees its place"
    );
    assert_eq!(
        node_b.leave(&expiring, &ghost).await.unwrap(),
        LeaveOutcome::NotMember,
        "an expired membership is gone"
    );
    assert_eq!(
        node_b
            .refresh(std::slice::from_ref(&expiring), &ghost, short_ttl)
            .await
            .unwrap(),
        vec![expiring.clone()],
        "refresh reports the membership it could not extend"
    );
    assert!(
        !node_b
            .members(&expiring)
            .await
            .unwrap()
            .contains(&"ghost".to_owned()),
        "refresh does not revive an expired membership"
    );

    concurrent_refreshes_extend_their_own_memberships(&node_a, &node_b, short_ttl).await;
    a_blocked_user_cannot_join_until_the_block_ends(&node_a, &node_b).await;
    sockets_lists_every_live_membership_with_its_expiry(&node_a, &node_b).await;
}

/// `sockets` lists each live membership (user, socket, expiry in Unix ms), sorted, from any node.
async fn sockets_lists_every_live_membership_with_its_expiry(
    node_a: &Arc<dyn RoomStore>,
    node_b: &Arc<dyn RoomStore>,
) {
    let room = RoomId::parse(&unique("chat:listed")).unwrap();
    let ttl = Duration::from_secs(60);
    for (user, socket) in [("bea", "s2"), ("ann", "s1"), ("bea", "s3")] {
        let member = Member {
            user_id: Arc::from(user),
            socket_id: Arc::from(socket),
        };
        node_a.join(&room, &member, 10, ttl).await.unwrap();
    }
    let before = crate::protocol::unix_now_millis();
    let listed = node_b.sockets(&room).await.unwrap();
    let pairs: Vec<(&str, &str)> = listed
        .iter()
        .map(|entry| (entry.user_id.as_str(), entry.socket_id.as_str()))
        .collect();
    assert_eq!(pairs, [("ann", "s1"), ("bea", "s2"), ("bea", "s3")]);
    for entry in &listed {
        let remaining = entry.expires_at_ms.saturating_sub(before);
        assert!(
            (55_000..=61_000).contains(&remaining),
            "expiry about one TTL ahead: {remaining} ms"
        );
    }
}

/// A block set on one node refuses the user's joins on every node until it ends, and only
/// that user's.
async fn a_blocked_user_cannot_join_until_the_block_ends(
    node_a: &Arc<dyn RoomStore>,
    node_b: &Arc<dyn RoomStore>,
) {
    let room = RoomId::parse(&unique("chat:moderated")).unwrap();
    let ttl = Duration::from_secs(30);
    let troll = Member {
        user_id: Arc::from("troll"),
        socket_id: Arc::from("s-troll"),
    };
    let guest = Member {
        user_id: Arc::from("guest"),
        socket_id: Arc::from("s-guest"),
    };
    node_a
        .block(&room, "troll", Duration::from_millis(400))
        .await
        .unwrap();
    assert_eq!(
        node_b.join(&room, &troll, 10, ttl).await.unwrap(),
        JoinOutcome::Blocked,
        "a block set on one node holds on another"
    );
    assert_eq!(
        node_b.join(&room, &guest, 10, ttl).await.unwrap(),
        JoinOutcome::Joined {
            first_for_user: true
        },
        "others are not blocked"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        node_a.join(&room, &troll, 10, ttl).await.unwrap(),
        JoinOutcome::Joined {
            first_for_user: true
        },
        "the block ends"
    );
}

/// Refreshes made at once (a backend may send them as one batch) each extend their own
/// memberships, in every room given, and only those.
async fn concurrent_refreshes_extend_their_own_memberships(
    node_a: &Arc<dyn RoomStore>,
    node_b: &Arc<dyn RoomStore>,
    short_ttl: Duration,
) {
    let rooms = [
        RoomId::parse(&unique("chat:busy")).unwrap(),
        RoomId::parse(&unique("chat:busy")).unwrap(),
    ];
    let members: Vec<Member> = (0..24)
        .map(|n| Member {
            user_id: Arc::from(format!("user-{n:02}")),
            socket_id: Arc::from(format!("socket-{n:02}")),
        })
        .collect();
    // Joined at once, so all of them are well inside their TTL when the refreshes start.
    let joins = members
        .iter()
        .flat_map(|member| rooms.iter().map(move |room| (room, member)))
        .map(|(room, member)| node_a.join(room, member, 100, short_ttl));
    for joined in futures_util::future::join_all(joins).await {
        joined.expect("join");
    }
    // A third of the members are refreshed; the others must expire.
    let kept: Vec<&Member> = members
        .iter()
        .filter(|member| member.user_id.ends_with(['0', '2', '4']))
        .collect();
    // Refreshed every third of the TTL, four times: past the TTL of those left out.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let refreshes = kept.iter().enumerate().map(|(position, member)| {
            let node = if position % 2 == 0 { node_a } else { node_b };
            node.refresh(&rooms, member, short_ttl)
        });
        for refreshed in futures_util::future::join_all(refreshes).await {
            assert_eq!(
                refreshed.expect("concurrent refresh"),
                Vec::<RoomId>::new(),
                "each refresh in a batch answers for its own memberships"
            );
        }
    }
    // Refreshing one that expired, batched with live ones, names only its own lost rooms.
    let lapsed = members
        .iter()
        .find(|member| !member.user_id.ends_with(['0', '2', '4']))
        .expect("a member left out");
    let (lapsed_gone, kept_gone) = tokio::join!(
        node_a.refresh(&rooms, lapsed, short_ttl),
        node_a.refresh(&rooms, kept[0], short_ttl)
    );
    assert_eq!(lapsed_gone.unwrap(), rooms);
    assert!(kept_gone.unwrap().is_empty());
    let kept_users: Vec<String> = kept
        .iter()
        .map(|member| member.user_id.to_string())
        .collect();
    for room in &rooms {
        assert_eq!(
            node_b.members(room).await.unwrap(),
            kept_users,
            "concurrent refreshes keep exactly their own memberships, in every room"
        );
    }
}

fn new_notification(id: &str, user_id: &str, created_at: i64) -> NewNotification {
    NewNotification {
        id: id.to_owned(),
        user_id: user_id.to_owned(),
        kind: "lesson.completed".to_owned(),
        content: format!("{{\"lesson\":\"{id}\"}}"),
        created_at,
    }
}

/// The `NotificationStore` guarantees.
pub async fn notification_suite(store: Arc<dyn NotificationStore>) {
    let owner = unique("owner-");
    let stranger = unique("stranger-");
    let id = |n: u32| format!("{owner}-n{n}");
    // n1..n5 at increasing times; n6 shares n5's timestamp (the id breaks the tie).
    for n in 1..=5 {
        let (stored, created) = store
            .insert(&new_notification(&id(n), &owner, 1_000 + i64::from(n)))
            .await
            .unwrap();
        assert!(created, "a new id is created");
        assert_eq!(stored.read_at, None);
    }
    store
        .insert(&new_notification(&id(6), &owner, 1_005))
        .await
        .unwrap();
    let mut duplicate = new_notification(&id(1), &owner, 9_999);
    duplicate.content = "\"changed\"".to_owned();
    let (stored, created) = store.insert(&duplicate).await.unwrap();
    assert!(!created, "insert is idempotent on id");
    assert_eq!(
        (stored.created_at, stored.content.as_str()),
        (1_001, format!("{{\"lesson\":\"{}\"}}", id(1)).as_str()),
        "the first row stays"
    );
    let (theirs, created) = store
        .insert(&new_notification(&id(1), &stranger, 7))
        .await
        .unwrap();
    assert!(
        created,
        "the same id for another user is another notification"
    );
    assert_eq!(
        (theirs.user_id.as_str(), theirs.created_at),
        (stranger.as_str(), 7)
    );
    assert!(store.delete(&stranger, &id(1)).await.unwrap());

    let first_page = store.list(&owner, 2, None, false).await.unwrap();
    let ids: Vec<&str> = first_page
        .items
        .iter()
        .map(|item| item.id.as_str())
        .collect();
    assert_eq!(
        ids,
        vec![id(6).as_str(), id(5).as_str()],
        "newest first, id breaks ties"
    );
    assert!(first_page.has_next_page);
    let cursor = Cursor::of(first_page.items.last().unwrap());
    let second_page = store.list(&owner, 10, Some(&cursor), false).await.unwrap();
    let ids: Vec<String> = second_page
        .items
        .iter()
        .map(|item| item.id.clone())
        .collect();
    assert_eq!(
        ids,
        vec![id(4), id(3), id(2), id(1)],
        "continues strictly after the cursor"
    );
    assert!(!second_page.has_next_page);

    assert_eq!(store.unread_count(&owner).await.unwrap(), 6);
    let read = store
        .mark_read(&owner, &id(6), 2_000)
        .await
        .unwrap()
        .expect("own notification");
    assert_eq!(read.read_at, Some(2_000));
    let again = store
        .mark_read(&owner, &id(6), 3_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.read_at, Some(2_000), "read_at is set once");
    assert_eq!(store.unread_count(&owner).await.unwrap(), 5);
    let unread = store.list(&owner, 10, None, true).await.unwrap();
    assert!(
        unread.items.iter().all(|item| item.read_at.is_none()) && unread.items.len() == 5,
        "unread filter"
    );

    assert_eq!(
        store.mark_read(&stranger, &id(5), 2_000).await.unwrap(),
        None,
        "another user's id is unknown"
    );
    assert!(
        !store.delete(&stranger, &id(5)).await.unwrap(),
        "another user cannot delete"
    );
    assert!(
        store
            .list(&stranger, 10, None, false)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(store.unread_count(&stranger).await.unwrap(), 0);
    assert_eq!(
        store.mark_read(&owner, "no-such-id", 2_000).await.unwrap(),
        None
    );

    assert!(store.delete(&owner, &id(5)).await.unwrap());
    assert!(
        !store.delete(&owner, &id(5)).await.unwrap(),
        "deleting twice finds nothing"
    );
    assert_eq!(
        store.mark_all_read(&owner, 4_000).await.unwrap(),
        4,
        "marks the remaining unread"
    );
    assert_eq!(store.unread_count(&owner).await.unwrap(), 0);
}

/// The `RateLimiter` guarantees.
pub async fn rate_limit_suite<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn RateLimiter>>,
{
    let node_a = make_node().await;
    let node_b = make_node().await;
    let key = unique("user-");
    let window = Duration::from_millis(800);
    let mut allowed = 0;
    for attempt in 0..5 {
        let limiter = if attempt % 2 == 0 { &node_a } else { &node_b };
        match limiter.hit(&key, 3, window).await.expect("hit") {
            RateDecision::Allowed => allowed += 1,
            RateDecision::Limited { retry_after } => {
                assert!(
                    retry_after > Duration::ZERO && retry_after <= window,
                    "retry_after within the window: {retry_after:?}"
                );
            }
        }
    }
    assert_eq!(allowed, 3, "at most `limit` hits per window across nodes");
    assert_eq!(
        node_a.hit(&unique("other-"), 3, window).await.unwrap(),
        RateDecision::Allowed,
        "keys are independent"
    );
    tokio::time::sleep(window + Duration::from_millis(100)).await;
    assert_eq!(
        node_b.hit(&key, 3, window).await.unwrap(),
        RateDecision::Allowed,
        "a new window allows again"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stores::memory::{
        MemoryBroker, MemoryBus, MemoryPresenceStore, MemoryRateLimiter, MemoryRoomStore,
    };

    #[tokio::test]
    async fn memory_broker_conforms() {
        let bus = MemoryBus::new();
        broker_suite(|handler| {
            let bus = bus.clone();
            async move { Arc::new(MemoryBroker::new(bus, handler)) as Arc<dyn Broker> }
        })
        .await;
    }

    #[tokio::test]
    async fn memory_presence_conforms() {
        let shared = Arc::new(MemoryPresenceStore::new());
        presence_suite(|| {
            let shared = shared.clone();
            async move { shared as Arc<dyn PresenceStore> }
        })
        .await;
    }

    #[tokio::test]
    async fn memory_rooms_conform() {
        let shared = Arc::new(MemoryRoomStore::new());
        room_suite(|| {
            let shared = shared.clone();
            async move { shared as Arc<dyn RoomStore> }
        })
        .await;
    }

    #[tokio::test]
    async fn memory_rate_limiter_conforms() {
        let shared = Arc::new(MemoryRateLimiter::new());
        rate_limit_suite(|| {
            let shared = shared.clone();
            async move { shared as Arc<dyn RateLimiter> }
        })
        .await;
    }
}
