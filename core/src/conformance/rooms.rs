//! The `RoomStore` guarantees (see `stores::rooms`), one function per guarantee, so that a
//! failure names the guarantee it broke. Each takes a factory that attaches one more node to the
//! same backend (for the memory stores: the same stores again), as a [`RoomNode`]: its room
//! store, and the presence store that holds its lease. Every test first takes a lease
//! (`announce_node`) for each node id it uses, with node ids random per run, and uses rooms of
//! its own. They run on the real clock: leases that must lapse last a few hundred milliseconds.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::unique;
use crate::room::RoomId;
use crate::stores::{
    JoinOutcome, Lease, LeaveOutcome, Member, NodeStatus, PresenceStore, RoomSocket, RoomStore,
    StoreError,
};

/// One node's view of a backend: its room store, and the presence store that holds its lease.
#[derive(Clone)]
pub struct RoomNode {
    pub rooms: Arc<dyn RoomStore>,
    pub presence: Arc<dyn PresenceStore>,
}

/// The lease of a node where its lapse is not under test.
const LONG_TTL: Duration = Duration::from_secs(60);
/// The lease of a node where its lapse is under test.
const SHORT_TTL: Duration = Duration::from_millis(600);

const JOINED_FIRST: JoinOutcome = JoinOutcome::Joined {
    first_for_user: true,
};

fn member(user: &str, socket: &str, node_id: &str) -> Member {
    Member {
        user_id: Arc::from(user),
        socket_id: Arc::from(socket),
        node_id: Arc::from(node_id),
    }
}

fn room_socket(user: &str, socket: &str, node_id: &str) -> RoomSocket {
    RoomSocket {
        user_id: user.to_owned(),
        socket_id: socket.to_owned(),
        node_id: node_id.to_owned(),
    }
}

/// A new room of the `prefix` type (`chat:conf`, ...), random per run.
fn new_room(prefix: &str) -> RoomId {
    RoomId::parse(&unique(prefix)).unwrap()
}

/// Announces `node_id` through `node`'s presence store, renewing its lease for `ttl`.
async fn lease(node: &RoomNode, node_id: &str, ttl: Duration) -> Lease {
    let status = NodeStatus {
        node_id: node_id.to_owned(),
        connections: 0,
        version: "test".to_owned(),
        announced_at_ms: crate::protocol::unix_now_millis(),
    };
    node.presence
        .announce_node(&status, ttl)
        .await
        .expect("announce_node")
}

/// A new node id, random per run, holding a lease for `ttl` announced through `node`.
async fn leased_node(node: &RoomNode, ttl: Duration) -> String {
    let node_id = unique("node-");
    lease(node, &node_id, ttl).await;
    node_id
}

/// Waits until a lease of `ttl` given now has surely lapsed.
async fn past(ttl: Duration) {
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
}

/// Capacity counts distinct users across nodes: a third user is refused from a room of two; a
/// member's second socket still joins it; a place freed by a user's last socket can be taken.
pub async fn capacity_counts_distinct_users_across_nodes<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = RoomNode>,
{
    let guarantee = "capacity_counts_distinct_users_across_nodes";
    let node_a = make_node().await;
    let node_b = make_node().await;
    let a = leased_node(&node_a, LONG_TTL).await;
    let b = leased_node(&node_b, LONG_TTL).await;
    let room = new_room("chat:conf");
    assert_eq!(
        node_a
            .rooms
            .join(&room, &member("u1", "s1", &a), 2)
            .await
            .unwrap(),
        JOINED_FIRST,
        "{guarantee}: the first user joins"
    );
    assert_eq!(
        node_b
            .rooms
            .join(&room, &member("u2", "s2", &b), 2)
            .await
            .unwrap(),
        JOINED_FIRST,
        "{guarantee}: the second user joins on another node"
    );
    assert_eq!(
        node_a
            .rooms
            .join(&room, &member("u3", "s3", &a), 2)
            .await
            .unwrap(),
        JoinOutcome::Full,
        "{guarantee}: capacity counts users across nodes"
    );
    assert_eq!(
        node_b
            .rooms
            .join(&room, &member("u1", "s4", &b), 2)
            .await
            .unwrap(),
        JoinOutcome::Joined {
            first_for_user: false
        },
        "{guarantee}: a member's second socket joins a full room"
    );
    node_a
        .rooms
        .leave(&room, &member("u1", "s1", &a))
        .await
        .unwrap();
    node_b
        .rooms
        .leave(&room, &member("u1", "s4", &b))
        .await
        .unwrap();
    assert_eq!(
        node_a
            .rooms
            .join(&room, &member("u3", "s3", &a), 2)
            .await
            .unwrap(),
        JOINED_FIRST,
        "{guarantee}: a freed place can be taken"
    );
}

/// `join` and `leave` report the first and last socket of a user: the first socket joins as
/// first, a second as not first, a repeated join changes nothing; leaving reports the last
/// socket, and leaving what is not a member is `NotMember`.
pub async fn join_and_leave_report_the_first_and_last_socket_of_a_user<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = RoomNode>,
{
    let guarantee = "join_and_leave_report_the_first_and_last_socket_of_a_user";
    let node_a = make_node().await;
    let node_b = make_node().await;
    let a = leased_node(&node_a, LONG_TTL).await;
    let b = leased_node(&node_b, LONG_TTL).await;
    let room = new_room("chat:conf");
    let first = member("u1", "s1", &a);
    let second = member("u1", "s4", &b);
    assert_eq!(
        node_a.rooms.join(&room, &first, 2).await.unwrap(),
        JOINED_FIRST,
        "{guarantee}: the user's first socket joins as first"
    );
    assert_eq!(
        node_b.rooms.join(&room, &second, 2).await.unwrap(),
        JoinOutcome::Joined {
            first_for_user: false
        },
        "{guarantee}: the user's second socket joins as not first"
    );
    assert_eq!(
        node_a.rooms.join(&room, &first, 2).await.unwrap(),
        JoinOutcome::AlreadyMember,
        "{guarantee}: a repeated join changes nothing"
    );
    assert_eq!(
        node_a.rooms.leave(&room, &first).await.unwrap(),
        LeaveOutcome::Left {
            last_for_user: false
        },
        "{guarantee}: another socket of the user is still in the room"
    );
    assert_eq!(
        node_b.rooms.leave(&room, &second).await.unwrap(),
        LeaveOutcome::Left {
            last_for_user: true
        },
        "{guarantee}: the user's last socket leaves as last"
    );
    assert_eq!(
        node_b.rooms.leave(&room, &second).await.unwrap(),
        LeaveOutcome::NotMember,
        "{guarantee}: a socket that left is not a member"
    );
    assert_eq!(
        node_a
            .rooms
            .leave(&room, &member("nobody", "s9", &a))
            .await
            .unwrap(),
        LeaveOutcome::NotMember,
        "{guarantee}: a socket that never joined is not a member"
    );
}

/// `members` lists distinct user ids, sorted, from any node; a user who left is not listed.
pub async fn members_are_distinct_and_sorted<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = RoomNode>,
{
    let guarantee = "members_are_distinct_and_sorted";
    let node_a = make_node().await;
    let node_b = make_node().await;
    let a = leased_node(&node_a, LONG_TTL).await;
    let room = new_room("chat:conf");
    for (user, socket) in [("u2", "s2"), ("u1", "s1"), ("u1", "s4")] {
        node_a
            .rooms
            .join(&room, &member(user, socket, &a), 2)
            .await
            .unwrap();
    }
    assert_eq!(
        node_b.rooms.members(&room).await.unwrap(),
        vec!["u1".to_owned(), "u2".to_owned()],
        "{guarantee}: members are distinct and sorted"
    );
    for socket in ["s1", "s4"] {
        node_a
            .rooms
            .leave(&room, &member("u1", socket, &a))
            .await
            .unwrap();
    }
    assert_eq!(
        node_a.rooms.members(&room).await.unwrap(),
        vec!["u2".to_owned()],
        "{guarantee}: a user whose sockets all left is not a member"
    );
}

/// `join` checks capacity and adds in one atomic step: concurrent joins from two nodes never
/// overfill a room.
pub async fn concurrent_joins_never_overfill_a_room<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = RoomNode>,
{
    let guarantee = "concurrent_joins_never_overfill_a_room";
    let node_a = make_node().await;
    let node_b = make_node().await;
    let a = leased_node(&node_a, LONG_TTL).await;
    let b = leased_node(&node_b, LONG_TTL).await;
    let crowded = new_room("chat:crowd");
    let attempts = (0..40).map(|index| {
        let (store, node_id) = if index % 2 == 0 {
            (node_a.rooms.clone(), &a)
        } else {
            (node_b.rooms.clone(), &b)
        };
        let crowded = crowded.clone();
        let candidate = member(&format!("user{index}"), &format!("sock{index}"), node_id);
        tokio::spawn(async move { store.join(&crowded, &candidate, 10).await.unwrap() })
    });
    let mut joined = 0;
    for attempt in attempts.collect::<Vec<_>>() {
        if attempt.await.unwrap() == JOINED_FIRST {
            joined += 1;
        }
    }
    assert_eq!(
        joined, 10,
        "{guarantee}: exactly capacity joins succeed under concurrency"
    );
    assert_eq!(
        node_a.rooms.members(&crowded).await.unwrap().len(),
        10,
        "{guarantee}: the room holds capacity users"
    );
}

/// The memberships of a node whose lease lapsed are gone: they are not listed, do not count
/// toward capacity, and cannot be left; those of a live node stay.
pub async fn memberships_of_a_lapsed_lease_are_gone<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = RoomNode>,
{
    let guarantee = "memberships_of_a_lapsed_lease_are_gone";
    let node_a = make_node().await;
    let node_b = make_node().await;
    let a = leased_node(&node_a, LONG_TTL).await;
    let b = leased_node(&node_b, SHORT_TTL).await;
    let room = new_room("chat:lease");
    let kept = member("kept", "s-kept", &a);
    let ghost = member("ghost", "s-ghost", &b);
    let third = member("third", "s-third", &a);
    assert_eq!(
        node_a.rooms.join(&room, &kept, 2).await.unwrap(),
        JOINED_FIRST,
        "{guarantee}: a member of the live node joins"
    );
    assert_eq!(
        node_b.rooms.join(&room, &ghost, 2).await.unwrap(),
        JOINED_FIRST,
        "{guarantee}: a member of the node whose lease will lapse joins"
    );
    assert_eq!(
        node_a.rooms.join(&room, &third, 2).await.unwrap(),
        JoinOutcome::Full,
        "{guarantee}: both memberships count while their leases live"
    );

    past(SHORT_TTL).await;
    assert_eq!(
        node_b.rooms.members(&room).await.unwrap(),
        vec!["kept".to_owned()],
        "{guarantee}: the members of a lapsed lease are not listed; a live node's are"
    );
    assert_eq!(
        node_a.rooms.sockets(&room).await.unwrap(),
        vec![room_socket("kept", "s-kept", &a)],
        "{guarantee}: the sockets of a lapsed lease are not listed; a live node's are"
    );
    assert_eq!(
        node_a.rooms.join(&room, &third, 2).await.unwrap(),
        JOINED_FIRST,
        "{guarantee}: the memberships of a lapsed lease do not count toward capacity"
    );
    assert_eq!(
        node_b.rooms.leave(&room, &ghost).await.unwrap(),
        LeaveOutcome::NotMember,
        "{guarantee}: the memberships of a lapsed lease cannot be left"
    );
}

/// A node granted a lease again (after its lapse) holds none of its old memberships: they are
/// not listed and do not count, and the node joins again, capacity checked.
pub async fn a_granted_lease_does_not_revive_memberships<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = RoomNode>,
{
    let guarantee = "a_granted_lease_does_not_revive_memberships";
    let node_a = make_node().await;
    let node_b = make_node().await;
    let a = leased_node(&node_a, LONG_TTL).await;
    let b = unique("node-");
    assert_eq!(
        lease(&node_b, &b, SHORT_TTL).await,
        Lease::Granted,
        "{guarantee}: a node's first announcement is granted a lease"
    );
    let room = new_room("chat:lease");
    let ghost_user = unique("ghost-");
    let kept = member("kept", "s-kept", &a);
    let ghost = member(&ghost_user, "s-ghost", &b);
    let third = member("third", "s-third", &a);
    node_a.rooms.join(&room, &kept, 2).await.unwrap();
    assert_eq!(
        node_b.rooms.join(&room, &ghost, 2).await.unwrap(),
        JOINED_FIRST,
        "{guarantee}: a member of the node whose lease will lapse joins"
    );

    past(SHORT_TTL).await;
    assert_eq!(
        node_a.rooms.join(&room, &third, 2).await.unwrap(),
        JOINED_FIRST,
        "{guarantee}: the lapsed membership freed its place"
    );
    assert_eq!(
        lease(&node_b, &b, LONG_TTL).await,
        Lease::Granted,
        "{guarantee}: an announcement after the lease lapsed is granted a new one"
    );
    assert_eq!(
        node_b.rooms.members(&room).await.unwrap(),
        vec!["kept".to_owned(), "third".to_owned()],
        "{guarantee}: a granted lease does not revive the node's old memberships"
    );
    assert_eq!(
        node_b.rooms.rooms_of(&ghost_user).await.unwrap(),
        Vec::<String>::new(),
        "{guarantee}: a granted lease does not revive the user's rooms"
    );
    assert_eq!(
        node_b.rooms.leave(&room, &ghost).await.unwrap(),
        LeaveOutcome::NotMember,
        "{guarantee}: an old membership cannot be left under the new lease"
    );
    assert_eq!(
        node_b.rooms.join(&room, &ghost, 2).await.unwrap(),
        JoinOutcome::Full,
        "{guarantee}: the node joins again, capacity checked"
    );
    node_a.rooms.leave(&room, &third).await.unwrap();
    assert_eq!(
        node_b.rooms.join(&room, &ghost, 2).await.unwrap(),
        JOINED_FIRST,
        "{guarantee}: the node joins again under its new lease, as the user's first socket"
    );
    let mut expected = vec![ghost_user.clone(), "kept".to_owned()];
    expected.sort();
    assert_eq!(
        node_a.rooms.members(&room).await.unwrap(),
        expected,
        "{guarantee}: a membership joined under the new lease is listed"
    );
}

/// `join` under no live lease of the member's node fails with `NoLease` and adds nothing: for a
/// node that never announced itself, and for one whose lease lapsed.
pub async fn join_without_a_lease_is_refused<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = RoomNode>,
{
    let guarantee = "join_without_a_lease_is_refused";
    let node_a = make_node().await;
    let node_b = make_node().await;
    let a = leased_node(&node_a, LONG_TTL).await;
    let b = leased_node(&node_b, SHORT_TTL).await;
    let never = unique("node-");
    let room = new_room("chat:nolease");
    let user = unique("u");

    let refused = node_a
        .rooms
        .join(&room, &member(&user, "s1", &never), 1)
        .await;
    assert!(
        matches!(refused, Err(StoreError::NoLease(_))),
        "{guarantee}: a node that never announced itself holds no lease, got {refused:?}"
    );
    past(SHORT_TTL).await;
    let refused = node_b.rooms.join(&room, &member(&user, "s2", &b), 1).await;
    assert!(
        matches!(refused, Err(StoreError::NoLease(_))),
        "{guarantee}: a node whose lease lapsed holds none, got {refused:?}"
    );

    assert!(
        node_a.rooms.members(&room).await.unwrap().is_empty(),
        "{guarantee}: a refused join adds no member"
    );
    assert!(
        node_a.rooms.sockets(&room).await.unwrap().is_empty(),
        "{guarantee}: a refused join adds no socket"
    );
    assert!(
        node_b.rooms.rooms_of(&user).await.unwrap().is_empty(),
        "{guarantee}: a refused join adds no room to the user"
    );
    assert_eq!(
        node_a
            .rooms
            .join(&room, &member("other", "s3", &a), 1)
            .await
            .unwrap(),
        JOINED_FIRST,
        "{guarantee}: a refused join takes no place"
    );
}

/// A block set on one node refuses the user's joins on every node until it ends, and only
/// that user's.
pub async fn a_blocked_user_cannot_join_until_the_block_ends<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = RoomNode>,
{
    let guarantee = "a_blocked_user_cannot_join_until_the_block_ends";
    let node_a = make_node().await;
    let node_b = make_node().await;
    let a = leased_node(&node_a, LONG_TTL).await;
    let b = leased_node(&node_b, LONG_TTL).await;
    let room = new_room("chat:moderated");
    node_a
        .rooms
        .block(&room, "troll", Duration::from_millis(400))
        .await
        .unwrap();
    assert_eq!(
        node_b
            .rooms
            .join(&room, &member("troll", "s-troll", &b), 10)
            .await
            .unwrap(),
        JoinOutcome::Blocked,
        "{guarantee}: a block set on one node holds on another"
    );
    assert_eq!(
        node_b
            .rooms
            .join(&room, &member("guest", "s-guest", &b), 10)
            .await
            .unwrap(),
        JOINED_FIRST,
        "{guarantee}: others are not blocked"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        node_a
            .rooms
            .join(&room, &member("troll", "s-troll", &a), 10)
            .await
            .unwrap(),
        JOINED_FIRST,
        "{guarantee}: the block ends"
    );
}

/// `sockets` lists each live membership (user, socket, node), sorted by user then socket, from
/// any node; a socket that left is not listed.
pub async fn sockets_lists_every_live_membership_with_its_node<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = RoomNode>,
{
    let guarantee = "sockets_lists_every_live_membership_with_its_node";
    let node_a = make_node().await;
    let node_b = make_node().await;
    let a = leased_node(&node_a, LONG_TTL).await;
    let b = leased_node(&node_b, LONG_TTL).await;
    let room = new_room("chat:listed");
    for (user, socket, node, node_id) in [
        ("bea", "s2", &node_b, &b),
        ("ann", "s1", &node_a, &a),
        ("bea", "s3", &node_a, &a),
    ] {
        node.rooms
            .join(&room, &member(user, socket, node_id), 10)
            .await
            .unwrap();
    }
    assert_eq!(
        node_b.rooms.sockets(&room).await.unwrap(),
        vec![
            room_socket("ann", "s1", &a),
            room_socket("bea", "s2", &b),
            room_socket("bea", "s3", &a),
        ],
        "{guarantee}: every membership with its node, sorted by user then socket"
    );
    node_b
        .rooms
        .leave(&room, &member("bea", "s2", &b))
        .await
        .unwrap();
    assert_eq!(
        node_a.rooms.sockets(&room).await.unwrap(),
        vec![room_socket("ann", "s1", &a), room_socket("bea", "s3", &a)],
        "{guarantee}: a socket that left is not listed"
    );
}

/// `rooms_of` lists the rooms a user is in, on any node, sorted: a room appears with the join,
/// stays while another socket of the user is still there, goes with the user's last leave, and
/// goes when the lease of the node holding the user's sockets there lapses (it stays where a
/// live node holds another). Other users' rooms are not listed, nor affected.
pub async fn rooms_of_lists_the_rooms_a_user_is_in<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = RoomNode>,
{
    let guarantee = "rooms_of_lists_the_rooms_a_user_is_in";
    let node_a = make_node().await;
    let node_b = make_node().await;
    let a = leased_node(&node_a, LONG_TTL).await;
    let user = unique("u");
    let other_user = unique("v");
    let (shared, remote, local) = (
        new_room("chat:ra"),
        new_room("chat:rb"),
        new_room("chat:rc"),
    );
    let on_a = |socket: &str| member(&user, socket, &a);
    node_a.rooms.join(&shared, &on_a("s1"), 10).await.unwrap();
    node_a.rooms.join(&local, &on_a("s1"), 10).await.unwrap();
    node_a.rooms.join(&local, &on_a("s3"), 10).await.unwrap();
    node_a
        .rooms
        .join(&remote, &member(&other_user, "s9", &a), 10)
        .await
        .unwrap();
    // The short lease last, so that it lives through the checks before its lapse.
    let b = leased_node(&node_b, SHORT_TTL).await;
    let on_b = member(&user, "s2", &b);
    node_b.rooms.join(&shared, &on_b, 10).await.unwrap();
    node_b.rooms.join(&remote, &on_b, 10).await.unwrap();

    let mut expected = vec![shared.to_string(), remote.to_string(), local.to_string()];
    expected.sort();
    assert_eq!(
        node_b.rooms.rooms_of(&user).await.unwrap(),
        expected,
        "{guarantee}: every node's joins"
    );
    assert_eq!(
        node_a.rooms.rooms_of(&other_user).await.unwrap(),
        vec![remote.to_string()],
        "{guarantee}: only the user's own rooms"
    );
    node_a.rooms.leave(&local, &on_a("s1")).await.unwrap();
    assert!(
        node_a
            .rooms
            .rooms_of(&user)
            .await
            .unwrap()
            .contains(&local.to_string()),
        "{guarantee}: another socket of the user is still in the room"
    );
    node_a.rooms.leave(&local, &on_a("s3")).await.unwrap();
    let mut expected = vec![shared.to_string(), remote.to_string()];
    expected.sort();
    assert_eq!(
        node_a.rooms.rooms_of(&user).await.unwrap(),
        expected,
        "{guarantee}: gone with the user's last leave"
    );

    past(SHORT_TTL).await;
    assert_eq!(
        node_a.rooms.rooms_of(&user).await.unwrap(),
        vec![shared.to_string()],
        "{guarantee}: gone with the lapsed lease, kept where a live node holds a socket"
    );
    assert_eq!(
        node_b.rooms.rooms_of(&other_user).await.unwrap(),
        vec![remote.to_string()],
        "{guarantee}: other users' rooms are not affected"
    );
    node_a.rooms.leave(&shared, &on_a("s1")).await.unwrap();
    assert!(
        node_a.rooms.rooms_of(&user).await.unwrap().is_empty(),
        "{guarantee}: nothing once the user left everywhere"
    );
}

/// Declares module `$module` with one `#[tokio::test]` per room guarantee, each named after it.
/// `$factory` is an expression giving a node factory (`Fn() -> impl Future<Output =
/// RoomNode>`); it is evaluated once per test.
#[macro_export]
macro_rules! room_conformance_tests {
    ($module:ident, $factory:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            use $crate::conformance::rooms as guarantees;

            #[tokio::test]
            async fn capacity_counts_distinct_users_across_nodes() {
                guarantees::capacity_counts_distinct_users_across_nodes($factory).await;
            }

            #[tokio::test]
            async fn join_and_leave_report_the_first_and_last_socket_of_a_user() {
                guarantees::join_and_leave_report_the_first_and_last_socket_of_a_user($factory)
                    .await;
            }

            #[tokio::test]
            async fn members_are_distinct_and_sorted() {
                guarantees::members_are_distinct_and_sorted($factory).await;
            }

            #[tokio::test]
            async fn concurrent_joins_never_overfill_a_room() {
                guarantees::concurrent_joins_never_overfill_a_room($factory).await;
            }

            #[tokio::test]
            async fn memberships_of_a_lapsed_lease_are_gone() {
                guarantees::memberships_of_a_lapsed_lease_are_gone($factory).await;
            }

            #[tokio::test]
            async fn a_granted_lease_does_not_revive_memberships() {
                guarantees::a_granted_lease_does_not_revive_memberships($factory).await;
            }

            #[tokio::test]
            async fn join_without_a_lease_is_refused() {
                guarantees::join_without_a_lease_is_refused($factory).await;
            }

            #[tokio::test]
            async fn a_blocked_user_cannot_join_until_the_block_ends() {
                guarantees::a_blocked_user_cannot_join_until_the_block_ends($factory).await;
            }

            #[tokio::test]
            async fn sockets_lists_every_live_membership_with_its_node() {
                guarantees::sockets_lists_every_live_membership_with_its_node($factory).await;
            }

            #[tokio::test]
            async fn rooms_of_lists_the_rooms_a_user_is_in() {
                guarantees::rooms_of_lists_the_rooms_a_user_is_in($factory).await;
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::RoomNode;
    use crate::stores::memory::{MemoryLeases, MemoryPresenceStore, MemoryRoomStore};

    /// The memory stores serve one node: every "node" is the same room and presence stores,
    /// sharing their leases.
    fn memory_nodes() -> impl Fn() -> std::future::Ready<RoomNode> {
        let leases = MemoryLeases::new();
        let shared = RoomNode {
            rooms: Arc::new(MemoryRoomStore::new(leases.clone())),
            presence: Arc::new(MemoryPresenceStore::new(leases)),
        };
        move || std::future::ready(shared.clone())
    }

    crate::room_conformance_tests!(memory_rooms, super::memory_nodes());
}
