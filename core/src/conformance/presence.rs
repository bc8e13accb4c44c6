//! The `PresenceStore` guarantees (see `stores::presence`), one function per guarantee, so that
//! a failure names the guarantee it broke. Each takes a factory that attaches one more node to
//! the same backend (for the memory store: the same store again). Every test first takes a lease
//! (`announce_node`) for each node id it uses, with node ids random per run. They run on the
//! real clock: leases that must lapse, and lingers, last a few hundred milliseconds.
//!
//! `take_offline` takes every offline user of the backend, not only a test's own: each test looks
//! only at its own users among those taken, and should have a backend of its own (a fresh store,
//! or a fresh key prefix), as the macro's factory expression, evaluated once per test, naturally
//! does.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::unique;
use crate::stores::{Arrival, Lease, NodeStatus, PresenceStore, SocketEntry, StoreError};

/// The lease of a node where its lapse is not under test.
const LONG_TTL: Duration = Duration::from_secs(60);
/// The lease of a node where its lapse is under test.
const SHORT_TTL: Duration = Duration::from_millis(600);
/// How long a user stays online after the last socket's disconnect, in these tests.
const LINGER: Duration = Duration::from_millis(600);

fn socket(user_id: &str, socket_id: &str, node_id: &str) -> SocketEntry {
    SocketEntry {
        user_id: Arc::from(user_id),
        socket_id: Arc::from(socket_id),
        node_id: Arc::from(node_id),
    }
}

/// Announces `node_id` through `store`, renewing its lease for `ttl`.
async fn lease(store: &dyn PresenceStore, node_id: &str, ttl: Duration) -> Lease {
    let status = NodeStatus {
        node_id: node_id.to_owned(),
        connections: 0,
        version: "test".to_owned(),
        announced_at_ms: crate::protocol::unix_now_millis(),
    };
    store
        .announce_node(&status, ttl)
        .await
        .expect("announce_node")
}

/// A new node id, random per run, holding a lease for `ttl` announced through `store`.
async fn leased_node(store: &dyn PresenceStore, ttl: Duration) -> String {
    let node_id = unique("node-");
    lease(store, &node_id, ttl).await;
    node_id
}

/// Waits until a lease or linger of `duration` given now has surely run out.
async fn past(duration: Duration) {
    tokio::time::sleep(duration + Duration::from_millis(300)).await;
}

/// The users among `users` that `take_offline` returns over two calls (a backend may take a
/// bounded batch per call), sorted; a user returned twice is listed twice.
async fn offline_among(store: &dyn PresenceStore, users: &[&str]) -> Vec<String> {
    let mut taken = Vec::new();
    for _ in 0..2 {
        taken.extend(
            store
                .take_offline()
                .await
                .expect("take_offline")
                .into_iter()
                .filter(|user| users.contains(&user.as_str())),
        );
    }
    taken.sort();
    taken
}

/// A user's listed sockets, sorted by socket id.
async fn sockets_of(store: &dyn PresenceStore, user_id: &str) -> Vec<SocketEntry> {
    let mut listed = store.sockets_of(user_id).await.expect("sockets_of");
    listed.sort_by(|left, right| left.socket_id.cmp(&right.socket_id));
    listed
}

/// `connect` returns `CameOnline` exactly when the user had no record: the first socket brings
/// the user online, a second one (on another node) does not.
pub async fn connect_brings_a_user_online_only_without_a_record<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn PresenceStore>>,
{
    let guarantee = "connect_brings_a_user_online_only_without_a_record";
    let node_a = make_node().await;
    let node_b = make_node().await;
    let a = leased_node(node_a.as_ref(), LONG_TTL).await;
    let b = leased_node(node_b.as_ref(), LONG_TTL).await;
    let alice = unique("alice-");
    let first = socket(&alice, "s1", &a);
    let second = socket(&alice, "s2", &b);
    assert_eq!(
        node_a.connect(&first).await.unwrap(),
        Arrival::CameOnline,
        "{guarantee}: the first socket brings the user online"
    );
    assert_eq!(
        node_b.connect(&second).await.unwrap(),
        Arrival::AlreadyOnline,
        "{guarantee}: a second socket on another node does not"
    );
    node_a.disconnect(&first, LINGER).await.unwrap();
    node_b.disconnect(&second, LINGER).await.unwrap();
}

/// `connect` under no live lease fails with `NoLease` and registers nothing: neither for a node
/// that never announced itself nor for one whose lease lapsed.
pub async fn connect_without_a_lease_is_refused<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn PresenceStore>>,
{
    let guarantee = "connect_without_a_lease_is_refused";
    let node_a = make_node().await;
    let node_b = make_node().await;
    let a = leased_node(node_a.as_ref(), LONG_TTL).await;
    let b = leased_node(node_b.as_ref(), SHORT_TTL).await;
    let never = unique("node-");
    let alice = unique("alice-");
    let bob = unique("bob-");

    let unannounced = socket(&alice, "s1", &never);
    let refused = node_a.connect(&unannounced).await;
    assert!(
        matches!(refused, Err(StoreError::NoLease(_))),
        "{guarantee}: a node that never announced itself holds no lease, got {refused:?}"
    );
    assert!(
        sockets_of(node_b.as_ref(), &alice).await.is_empty(),
        "{guarantee}: a refused socket is not listed"
    );

    past(SHORT_TTL).await;
    let lapsed = socket(&bob, "s2", &b);
    let refused = node_b.connect(&lapsed).await;
    assert!(
        matches!(refused, Err(StoreError::NoLease(_))),
        "{guarantee}: a node whose lease lapsed holds none, got {refused:?}"
    );
    assert!(
        sockets_of(node_a.as_ref(), &bob).await.is_empty(),
        "{guarantee}: a refused socket is not listed"
    );

    // Nothing was registered: the users' first sockets under a live lease are arrivals.
    for user in [&alice, &bob] {
        let entry = socket(user, "s3", &a);
        assert_eq!(
            node_a.connect(&entry).await.unwrap(),
            Arrival::CameOnline,
            "{guarantee}: a refused connect leaves no record of the user"
        );
        node_a.disconnect(&entry, LINGER).await.unwrap();
    }
}

/// `sockets_of` lists a user's sockets registered under live leases, with their nodes, from any
/// node; once a node's lease lapses, its sockets are not listed any more (without a disconnect).
pub async fn sockets_of_lists_the_sockets_under_live_leases<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn PresenceStore>>,
{
    let guarantee = "sockets_of_lists_the_sockets_under_live_leases";
    let node_a = make_node().await;
    let node_b = make_node().await;
    let a = leased_node(node_a.as_ref(), LONG_TTL).await;
    let b = leased_node(node_b.as_ref(), SHORT_TTL).await;
    let alice = unique("alice-");
    let first = socket(&alice, "s1", &a);
    let second = socket(&alice, "s2", &b);
    node_a.connect(&first).await.unwrap();
    node_b.connect(&second).await.unwrap();
    assert_eq!(
        sockets_of(node_a.as_ref(), &alice).await,
        vec![first.clone(), second.clone()],
        "{guarantee}: every node's sockets, with their nodes"
    );

    assert_eq!(
        lease(node_a.as_ref(), &a, LONG_TTL).await,
        Lease::Held,
        "{guarantee}: a renewed live lease is held"
    );
    past(SHORT_TTL).await;
    assert_eq!(
        sockets_of(node_b.as_ref(), &alice).await,
        vec![first.clone()],
        "{guarantee}: the sockets of a lapsed lease are not listed, those of a live one are"
    );
    node_a.disconnect(&first, LINGER).await.unwrap();
}

/// `disconnect` removes the socket; after the user's last socket the user stays online for the
/// linger (a reconnect within it is no arrival), then goes offline, taken once.
pub async fn disconnect_removes_the_socket_and_the_user_lingers<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn PresenceStore>>,
{
    let guarantee = "disconnect_removes_the_socket_and_the_user_lingers";
    let node_a = make_node().await;
    let node_b = make_node().await;
    let a = leased_node(node_a.as_ref(), LONG_TTL).await;
    let b = leased_node(node_b.as_ref(), LONG_TTL).await;
    let alice = unique("alice-");
    let users = [alice.as_str()];
    let first = socket(&alice, "s1", &a);
    let second = socket(&alice, "s2", &b);
    node_a.connect(&first).await.unwrap();
    node_b.connect(&second).await.unwrap();

    node_b.disconnect(&second, LINGER).await.unwrap();
    assert_eq!(
        sockets_of(node_a.as_ref(), &alice).await,
        vec![first.clone()],
        "{guarantee}: disconnect removes the socket"
    );
    assert!(
        offline_among(node_b.as_ref(), &users).await.is_empty(),
        "{guarantee}: a user with another socket is online"
    );

    node_a.disconnect(&first, LINGER).await.unwrap();
    assert!(
        sockets_of(node_b.as_ref(), &alice).await.is_empty(),
        "{guarantee}: the last socket is removed too"
    );
    assert!(
        offline_among(node_a.as_ref(), &users).await.is_empty(),
        "{guarantee}: online for the linger"
    );
    assert_eq!(
        node_b.connect(&second).await.unwrap(),
        Arrival::AlreadyOnline,
        "{guarantee}: a reconnect within the linger is no arrival"
    );
    node_b.disconnect(&second, LINGER).await.unwrap();
    assert!(
        offline_among(node_a.as_ref(), &users).await.is_empty(),
        "{guarantee}: online for the linger after the last socket again"
    );

    past(LINGER).await;
    assert_eq!(
        offline_among(node_b.as_ref(), &users).await,
        vec![alice.clone()],
        "{guarantee}: offline once the linger ran out"
    );
    assert!(
        offline_among(node_a.as_ref(), &users).await.is_empty(),
        "{guarantee}: taken offline once"
    );
}

/// Once a node's lease lapses, the users with no socket on another live node go offline at once,
/// with no linger (their sockets were never disconnected); a user who still has a socket under a
/// live lease stays online.
pub async fn a_lapsed_lease_takes_its_users_offline_at_once<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn PresenceStore>>,
{
    let guarantee = "a_lapsed_lease_takes_its_users_offline_at_once";
    let node_a = make_node().await;
    let node_b = make_node().await;
    let a = leased_node(node_a.as_ref(), LONG_TTL).await;
    let b = leased_node(node_b.as_ref(), SHORT_TTL).await;
    let alice = unique("alice-");
    let bob = unique("bob-");
    let users = [alice.as_str(), bob.as_str()];
    let alice_on_a = socket(&alice, "s1", &a);
    let alice_on_b = socket(&alice, "s2", &b);
    let bob_on_b = socket(&bob, "s3", &b);
    node_a.connect(&alice_on_a).await.unwrap();
    node_b.connect(&alice_on_b).await.unwrap();
    assert_eq!(
        node_b.connect(&bob_on_b).await.unwrap(),
        Arrival::CameOnline,
        "{guarantee}: a user's first socket brings the user online"
    );
    assert!(
        offline_among(node_a.as_ref(), &users).await.is_empty(),
        "{guarantee}: users are online while their node's lease lives"
    );

    past(SHORT_TTL).await;
    assert_eq!(
        offline_among(node_a.as_ref(), &users).await,
        vec![bob.clone()],
        "{guarantee}: the lapse takes its users offline at once, and only those with no other \
         socket under a live lease"
    );
    assert_eq!(
        sockets_of(node_a.as_ref(), &alice).await,
        vec![alice_on_a.clone()],
        "{guarantee}: the user's socket on the live node is still held"
    );
    node_a.disconnect(&alice_on_a, LINGER).await.unwrap();
}

/// `announce_node` answers `Granted` to a node with no live lease (its first announcement, or
/// after a lapse) and `Held` to a live one; after a grant, nothing the node registered before is
/// held: its old sockets are not listed, their users go offline, and a socket connected again is
/// a new arrival.
pub async fn a_granted_lease_starts_empty<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn PresenceStore>>,
{
    let guarantee = "a_granted_lease_starts_empty";
    let node_a = make_node().await;
    let node_b = make_node().await;
    let b = unique("node-");
    let bob = unique("bob-");
    let users = [bob.as_str()];
    assert_eq!(
        lease(node_b.as_ref(), &b, SHORT_TTL).await,
        Lease::Granted,
        "{guarantee}: a node's first announcement is granted a lease"
    );
    assert_eq!(
        lease(node_b.as_ref(), &b, SHORT_TTL).await,
        Lease::Held,
        "{guarantee}: an announcement within the lease holds it"
    );
    let bob_on_b = socket(&bob, "s1", &b);
    assert_eq!(
        node_b.connect(&bob_on_b).await.unwrap(),
        Arrival::CameOnline,
        "{guarantee}: a user's first socket brings the user online"
    );

    past(SHORT_TTL).await;
    assert_eq!(
        lease(node_b.as_ref(), &b, LONG_TTL).await,
        Lease::Granted,
        "{guarantee}: an announcement after the lease lapsed is granted a new one"
    );
    assert!(
        sockets_of(node_a.as_ref(), &bob).await.is_empty(),
        "{guarantee}: the sockets registered under the lapsed lease are not held"
    );
    assert_eq!(
        offline_among(node_a.as_ref(), &users).await,
        vec![bob.clone()],
        "{guarantee}: the users of the lapsed lease are offline"
    );
    assert_eq!(
        node_b.connect(&bob_on_b).await.unwrap(),
        Arrival::CameOnline,
        "{guarantee}: a socket registered again under the new lease is an arrival"
    );
    assert_eq!(
        sockets_of(node_a.as_ref(), &bob).await,
        vec![bob_on_b.clone()],
        "{guarantee}: a socket registered under the new lease is listed"
    );
    node_b.disconnect(&bob_on_b, LINGER).await.unwrap();
}

/// `take_offline` returns each user with no socket under a live lease and no linger left, and
/// removes them: across nodes calling it at once, each such user is returned exactly once,
/// whether they left (after the linger) or their node's lease lapsed.
pub async fn each_offline_user_is_taken_exactly_once<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn PresenceStore>>,
{
    let guarantee = "each_offline_user_is_taken_exactly_once";
    let node_a = make_node().await;
    let node_b = make_node().await;
    let node_c = make_node().await;
    let a = leased_node(node_a.as_ref(), LONG_TTL).await;
    let b = leased_node(node_b.as_ref(), SHORT_TTL).await;
    let alice = unique("alice-");
    let bob = unique("bob-");
    let carol = unique("carol-");
    let users = [alice.as_str(), bob.as_str(), carol.as_str()];
    let alice_on_a = socket(&alice, "s1", &a);
    let bob_on_b = socket(&bob, "s2", &b);
    let carol_on_a = socket(&carol, "s3", &a);
    node_a.connect(&alice_on_a).await.unwrap();
    node_b.connect(&bob_on_b).await.unwrap();
    node_a.connect(&carol_on_a).await.unwrap();
    node_a.disconnect(&alice_on_a, LINGER).await.unwrap();

    past(LINGER.max(SHORT_TTL)).await;
    let (from_a, from_b, from_c) = tokio::join!(
        offline_among(node_a.as_ref(), &users),
        offline_among(node_b.as_ref(), &users),
        offline_among(node_c.as_ref(), &users)
    );
    let mut all: Vec<String> = from_a.into_iter().chain(from_b).chain(from_c).collect();
    all.sort();
    let mut expected = vec![alice.clone(), bob.clone()];
    expected.sort();
    assert_eq!(
        all, expected,
        "{guarantee}: each offline user is taken exactly once across nodes"
    );
    assert!(
        offline_among(node_c.as_ref(), &users).await.is_empty(),
        "{guarantee}: taken users are removed"
    );
    node_a.disconnect(&carol_on_a, LINGER).await.unwrap();
}

/// Connects made at once (a backend may send them as one batch) behave as if made one at a
/// time: of many sockets of a few users connecting together, exactly one per user brings the
/// user online, every socket is recorded on its own node, and a socket of a node with no lease,
/// in the same batch, is refused alone.
pub async fn concurrent_connects_behave_as_if_one_at_a_time<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn PresenceStore>>,
{
    let guarantee = "concurrent_connects_behave_as_if_one_at_a_time";
    let node_a = &make_node().await;
    let node_b = &make_node().await;
    let a = leased_node(node_a.as_ref(), LONG_TTL).await;
    let b = leased_node(node_b.as_ref(), LONG_TTL).await;
    let unleased = unique("node-");
    let users: Vec<String> = (0..4).map(|_| unique("crowd-")).collect();
    let sockets: Vec<SocketEntry> = (0..40)
        .map(|number| {
            let node_id = if number % 2 == 0 { &a } else { &b };
            socket(
                &users[number % users.len()],
                &format!("c{number:02}"),
                node_id,
            )
        })
        .collect();
    let orphans: Vec<SocketEntry> = users
        .iter()
        .map(|user| socket(user, "orphan", &unleased))
        .collect();
    let node_of = |entry: &SocketEntry| {
        if *entry.node_id == *b { node_b } else { node_a }
    };
    let results = futures_util::future::join_all(
        orphans
            .iter()
            .chain(&sockets)
            .map(|entry| node_of(entry).connect(entry)),
    )
    .await;
    let (refusals, arrivals) = results.split_at(orphans.len());
    for refused in refusals {
        assert!(
            matches!(refused, Err(StoreError::NoLease(_))),
            "{guarantee}: a connect without a lease is refused, alone, got {refused:?}"
        );
    }
    for user in &users {
        let came_online = sockets
            .iter()
            .zip(arrivals)
            .filter(|(entry, _)| *entry.user_id == **user)
            .filter(|(_, arrival)| *arrival.as_ref().unwrap() == Arrival::CameOnline)
            .count();
        assert_eq!(
            came_online, 1,
            "{guarantee}: concurrent connects bring each user online exactly once"
        );
    }
    for user in &users {
        let expected: Vec<SocketEntry> = sockets
            .iter()
            .filter(|entry| *entry.user_id == **user)
            .cloned()
            .collect();
        assert_eq!(
            sockets_of(node_a.as_ref(), user).await,
            expected,
            "{guarantee}: each concurrent connect recorded its socket and node, and no other"
        );
    }
    for entry in &sockets {
        node_of(entry).disconnect(entry, LINGER).await.unwrap();
    }
}

/// `nodes` lists each node whose lease is live, with its latest status, from any node, sorted
/// by node id; a node whose lease lapsed drops out.
pub async fn nodes_lists_the_nodes_whose_lease_is_live<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn PresenceStore>>,
{
    let guarantee = "nodes_lists_the_nodes_whose_lease_is_live";
    let node_a = make_node().await;
    let node_b = make_node().await;
    let status = |node_id: &str, connections: u64| NodeStatus {
        node_id: node_id.to_owned(),
        connections,
        version: "test".to_owned(),
        announced_at_ms: crate::protocol::unix_now_millis(),
    };
    let (a, b) = (unique("node-"), unique("node-"));
    node_a
        .announce_node(&status(&a, 3), LONG_TTL)
        .await
        .unwrap();
    node_b
        .announce_node(&status(&b, 5), SHORT_TTL)
        .await
        .unwrap();
    node_a
        .announce_node(&status(&a, 4), LONG_TTL)
        .await
        .unwrap();
    let listed = |nodes: Vec<NodeStatus>| -> Vec<(String, u64)> {
        nodes
            .into_iter()
            .filter(|node| node.node_id == a || node.node_id == b)
            .map(|node| (node.node_id, node.connections))
            .collect()
    };
    let mut expected = vec![(a.clone(), 4), (b.clone(), 5)];
    expected.sort();
    assert_eq!(
        listed(node_b.nodes().await.unwrap()),
        expected,
        "{guarantee}: the latest status of each node, sorted, from any node"
    );
    past(SHORT_TTL).await;
    assert_eq!(
        listed(node_a.nodes().await.unwrap()),
        vec![(a.clone(), 4)],
        "{guarantee}: a node whose lease lapsed drops out"
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
            async fn connect_without_a_lease_is_refused() {
                guarantees::connect_without_a_lease_is_refused($factory).await;
            }

            #[tokio::test]
            async fn sockets_of_lists_the_sockets_under_live_leases() {
                guarantees::sockets_of_lists_the_sockets_under_live_leases($factory).await;
            }

            #[tokio::test]
            async fn disconnect_removes_the_socket_and_the_user_lingers() {
                guarantees::disconnect_removes_the_socket_and_the_user_lingers($factory).await;
            }

            #[tokio::test]
            async fn a_lapsed_lease_takes_its_users_offline_at_once() {
                guarantees::a_lapsed_lease_takes_its_users_offline_at_once($factory).await;
            }

            #[tokio::test]
            async fn a_granted_lease_starts_empty() {
                guarantees::a_granted_lease_starts_empty($factory).await;
            }

            #[tokio::test]
            async fn each_offline_user_is_taken_exactly_once() {
                guarantees::each_offline_user_is_taken_exactly_once($factory).await;
            }

            #[tokio::test]
            async fn concurrent_connects_behave_as_if_one_at_a_time() {
                guarantees::concurrent_connects_behave_as_if_one_at_a_time($factory).await;
            }

            #[tokio::test]
            async fn nodes_lists_the_nodes_whose_lease_is_live() {
                guarantees::nodes_lists_the_nodes_whose_lease_is_live($factory).await;
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::stores::PresenceStore;
    use crate::stores::memory::{MemoryLeases, MemoryPresenceStore};

    /// The memory store serves one node: every "node" is the same store (and its leases).
    fn memory_nodes() -> impl Fn() -> std::future::Ready<Arc<dyn PresenceStore>> {
        let leases = MemoryLeases::new();
        let shared: Arc<dyn PresenceStore> = Arc::new(MemoryPresenceStore::new(leases));
        move || std::future::ready(shared.clone())
    }

    crate::presence_conformance_tests!(memory_presence, super::memory_nodes());
}
