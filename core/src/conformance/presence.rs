//! The `PresenceStore` guarantees (see `stores::presence`), one function per guarantee, so that
//! a failure names the guarantee it broke. Each takes a factory that attaches one more node to
//! the same backend (for the memory store: the same store again). They run on the real clock,
//! with TTLs of a few hundred milliseconds.
//!
//! `take_offline` takes every offline user of the backend, not only a test's own: give each
//! test a backend of its own (a fresh store, or a fresh key prefix), as the macro's factory
//! expression, evaluated once per test, naturally does.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::unique;
use crate::stores::{Arrival, NodeStatus, PresenceStore, SocketEntry};

/// The presence TTL of these tests.
const TTL: Duration = Duration::from_millis(600);

fn socket(user_id: &str, socket_id: &str, node_id: &str) -> SocketEntry {
    SocketEntry {
        user_id: Arc::from(user_id),
        socket_id: Arc::from(socket_id),
        node_id: Arc::from(node_id),
    }
}

/// The users among `users` that `take_offline` returns, sorted.
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

/// Waits until a TTL given now has surely run out.
async fn past_the_ttl() {
    tokio::time::sleep(TTL + Duration::from_millis(200)).await;
}

/// `connect` returns `CameOnline` exactly when the user had no record: the first socket brings
/// the user online, a second one (on another node) does not.
pub async fn connect_brings_a_user_online_only_without_a_record<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn PresenceStore>>,
{
    let node_a = make_node().await;
    let node_b = make_node().await;
    let alice = unique("alice-");
    let first = socket(&alice, "s1", "node-a");
    let second = socket(&alice, "s2", "node-b");
    assert_eq!(
        node_a.connect(&first, TTL).await.unwrap(),
        Arrival::CameOnline,
        "first socket brings the user online"
    );
    assert_eq!(
        node_b.connect(&second, TTL).await.unwrap(),
        Arrival::AlreadyOnline,
        "second socket on another node does not"
    );
    node_a.disconnect(&first).await.unwrap();
    node_b.disconnect(&second).await.unwrap();
}

/// `sockets_of` lists the live sockets of a user, with their nodes, from any node; an expired
/// socket is not listed.
pub async fn sockets_of_lists_the_live_sockets<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn PresenceStore>>,
{
    let node_a = make_node().await;
    let node_b = make_node().await;
    let alice = unique("alice-");
    let bob = unique("bob-");
    let first = socket(&alice, "s1", "node-a");
    let second = socket(&alice, "s2", "node-b");
    node_a.connect(&first, TTL).await.unwrap();
    node_b.connect(&second, TTL).await.unwrap();
    let listed = node_a.sockets_of(&alice).await.unwrap();
    assert_eq!(
        listed,
        vec![first.clone(), second.clone()],
        "sockets_of lists live sockets with their nodes"
    );

    // A silent socket (no heartbeat) is not listed once it expired, even without a disconnect.
    let silent = socket(&bob, "s3", "node-a");
    node_a.connect(&silent, TTL).await.unwrap();
    past_the_ttl().await;
    assert!(
        node_a.sockets_of(&bob).await.unwrap().is_empty(),
        "expired sockets are not listed"
    );
}

/// `disconnect` removes the socket; after the last socket leaves, the user stays online until
/// the TTL runs out, then goes offline.
pub async fn disconnect_removes_the_socket_not_the_user_until_the_ttl<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn PresenceStore>>,
{
    let node_a = make_node().await;
    let node_b = make_node().await;
    let alice = unique("alice-");
    let users = [alice.as_str()];
    let first = socket(&alice, "s1", "node-a");
    let second = socket(&alice, "s2", "node-b");
    node_a.connect(&first, TTL).await.unwrap();
    node_b.connect(&second, TTL).await.unwrap();

    node_b.disconnect(&second).await.unwrap();
    assert_eq!(
        node_a.sockets_of(&alice).await.unwrap(),
        vec![first.clone()],
        "disconnect removes the socket"
    );

    node_a.disconnect(&first).await.unwrap();
    assert!(
        offline_among(node_a.as_ref(), &users).await.is_empty(),
        "online until the TTL runs out"
    );
    past_the_ttl().await;
    assert_eq!(
        offline_among(node_b.as_ref(), &users).await,
        vec![alice.clone()],
        "offline once the TTL ran out"
    );
}

/// `heartbeat` extends the TTL: heartbeats keep the user online well past one TTL.
pub async fn heartbeats_keep_a_user_online<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn PresenceStore>>,
{
    let node_a = make_node().await;
    let node_b = make_node().await;
    let alice = unique("alice-");
    let users = [alice.as_str()];
    let first = socket(&alice, "s1", "node-a");
    node_a.connect(&first, TTL).await.unwrap();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        node_a.heartbeat(&first, TTL).await.unwrap();
        assert!(
            offline_among(node_b.as_ref(), &users).await.is_empty(),
            "heartbeat keeps the user online"
        );
    }
    node_a.disconnect(&first).await.unwrap();
}

/// `take_offline` returns each user whose TTL ran out with no live socket, and removes them:
/// across nodes calling it at once, each such user is returned exactly once.
pub async fn each_offline_user_is_taken_exactly_once<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn PresenceStore>>,
{
    let node_a = make_node().await;
    let node_b = make_node().await;
    let alice = unique("alice-");
    let bob = unique("bob-");
    let users = [alice.as_str(), bob.as_str()];
    let first = socket(&alice, "s1", "node-a");
    node_a.connect(&first, TTL).await.unwrap();
    node_a.disconnect(&first).await.unwrap();
    past_the_ttl().await;
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
}

/// An expired socket does not keep its user online: a silent socket (no heartbeat) goes
/// offline too, even without a disconnect.
pub async fn expired_sockets_do_not_keep_a_user_online<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn PresenceStore>>,
{
    let node_a = make_node().await;
    let node_b = make_node().await;
    let bob = unique("bob-");
    let users = [bob.as_str()];
    let silent = socket(&bob, "s3", "node-a");
    assert_eq!(
        node_a.connect(&silent, TTL).await.unwrap(),
        Arrival::CameOnline
    );
    past_the_ttl().await;
    assert_eq!(
        offline_among(node_b.as_ref(), &users).await,
        vec![bob.clone()],
        "expired sockets do not keep a user online"
    );
}

/// A `heartbeat` after the user was taken offline recreates the record and returns
/// `CameOnline`.
pub async fn a_heartbeat_after_going_offline_is_a_new_arrival<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn PresenceStore>>,
{
    let node_a = make_node().await;
    let node_b = make_node().await;
    let bob = unique("bob-");
    let users = [bob.as_str()];
    let silent = socket(&bob, "s3", "node-a");
    assert_eq!(
        node_a.connect(&silent, TTL).await.unwrap(),
        Arrival::CameOnline
    );
    past_the_ttl().await;
    assert_eq!(
        offline_among(node_b.as_ref(), &users).await,
        vec![bob.clone()],
        "expired sockets do not keep a user online"
    );
    assert_eq!(
        node_a.heartbeat(&silent, TTL).await.unwrap(),
        Arrival::CameOnline,
        "heartbeat after offline is a new arrival"
    );
    node_a.disconnect(&silent).await.unwrap();
}

/// Connects and heartbeats made at once (a backend may send them as one batch) behave as if made
/// one at a time: of many sockets of a few users connecting together, exactly one per user
/// brings the user online, and every socket is recorded on its own node.
pub async fn concurrent_calls_behave_as_if_one_at_a_time<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn PresenceStore>>,
{
    let node_a = &make_node().await;
    let node_b = &make_node().await;
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
            .map(|entry| node_of(entry).connect(entry, TTL)),
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
            .map(|entry| node_of(entry).heartbeat(entry, TTL)),
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

/// `nodes` lists each node whose latest announcement is within its ttl, from any node, sorted.
pub async fn nodes_lists_the_nodes_announced_within_their_ttl<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn PresenceStore>>,
{
    let node_a = make_node().await;
    let node_b = make_node().await;
    let status = |node_id: &str, connections: u64| NodeStatus {
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
    let listed = |nodes: Vec<NodeStatus>| -> Vec<(String, u64)> {
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

/// Declares module `$module` with one `#[tokio::test]` per presence guarantee, each named after
/// it. `$factory` is an expression giving a node factory (`Fn() -> impl Future<Output =
/// Arc<dyn PresenceStore>>`); it is evaluated once per test, and each evaluation should give a
/// backend of its own (`take_offline` takes every offline user of the backend).
#[macro_export]
macro_rules! presence_conformance_tests {
    ($module:ident, $factory:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            use $crate::conformance::presence as guarantees;

            #[tokio::test]
            async fn connect_brings_a_user_online_only_without_a_record() {
                guarantees::connect_brings_a_user_online_only_without_a_record($factory).await;
            }

            #[tokio::test]
            async fn sockets_of_lists_the_live_sockets() {
                guarantees::sockets_of_lists_the_live_sockets($factory).await;
            }

            #[tokio::test]
            async fn disconnect_removes_the_socket_not_the_user_until_the_ttl() {
                guarantees::disconnect_removes_the_socket_not_the_user_until_the_ttl($factory)
                    .await;
            }

            #[tokio::test]
            async fn heartbeats_keep_a_user_online() {
                guarantees::heartbeats_keep_a_user_online($factory).await;
            }

            #[tokio::test]
            async fn each_offline_user_is_taken_exactly_once() {
                guarantees::each_offline_user_is_taken_exactly_once($factory).await;
            }

            #[tokio::test]
            async fn expired_sockets_do_not_keep_a_user_online() {
                guarantees::expired_sockets_do_not_keep_a_user_online($factory).await;
            }

            #[tokio::test]
            async fn a_heartbeat_after_going_offline_is_a_new_arrival() {
                guarantees::a_heartbeat_after_going_offline_is_a_new_arrival($factory).await;
            }

            #[tokio::test]
            async fn concurrent_calls_behave_as_if_one_at_a_time() {
                guarantees::concurrent_calls_behave_as_if_one_at_a_time($factory).await;
            }

            #[tokio::test]
            async fn nodes_lists_the_nodes_announced_within_their_ttl() {
                guarantees::nodes_lists_the_nodes_announced_within_their_ttl($factory).await;
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::stores::PresenceStore;
    use crate::stores::memory::MemoryPresenceStore;

    /// The memory store serves one node: every "node" is the same store.
    fn memory_nodes() -> impl Fn() -> std::future::Ready<Arc<dyn PresenceStore>> {
        let shared: Arc<dyn PresenceStore> = Arc::new(MemoryPresenceStore::new());
        move || std::future::ready(shared.clone())
    }

    crate::presence_conformance_tests!(memory_presence, super::memory_nodes());
}
