//! The `RoomStore` guarantees (see `stores::rooms`), one function per guarantee, so that a
//! failure names the guarantee it broke. Each takes a factory that attaches one more node to the
//! same backend (for the memory store: the same store again); each test uses rooms of its own.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::unique;
use crate::room::RoomId;
use crate::stores::{JoinOutcome, LeaveOutcome, Member, RoomStore};

/// Membership TTL the tests use where expiry is not under test.
const LONG_TTL: Duration = Duration::from_secs(60);
/// Membership TTL the tests use where expiry is under test.
const SHORT_TTL: Duration = Duration::from_millis(600);

const JOINED_FIRST: JoinOutcome = JoinOutcome::Joined {
    first_for_user: true,
};

fn member(user: &str, socket: &str) -> Member {
    Member {
        user_id: Arc::from(user),
        socket_id: Arc::from(socket),
    }
}

/// A new room of the `prefix` type (`chat:conf`, ...), random per run.
fn new_room(prefix: &str) -> RoomId {
    RoomId::parse(&unique(prefix)).unwrap()
}

/// Capacity counts distinct users across nodes: a third user is refused from a room of two; a
/// member's second socket still joins it; a place freed by a user's last socket can be taken.
pub async fn capacity_counts_distinct_users_across_nodes<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn RoomStore>>,
{
    let node_a = make_node().await;
    let node_b = make_node().await;
    let room = new_room("chat:conf");
    assert_eq!(
        node_a
            .join(&room, &member("u1", "s1"), 2, LONG_TTL)
            .await
            .unwrap(),
        JOINED_FIRST
    );
    assert_eq!(
        node_b
            .join(&room, &member("u2", "s2"), 2, LONG_TTL)
            .await
            .unwrap(),
        JOINED_FIRST
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
    node_a.leave(&room, &member("u1", "s1")).await.unwrap();
    node_a.leave(&room, &member("u1", "s4")).await.unwrap();
    assert_eq!(
        node_a
            .join(&room, &member("u3", "s3"), 2, LONG_TTL)
            .await
            .unwrap(),
        JOINED_FIRST,
        "a freed place can be taken"
    );
}

/// `join` and `leave` report the first and last socket of a user: the first socket joins as
/// first, a second as not first, a repeated join changes nothing; leaving reports the last
/// socket, and leaving what is not a member is `NotMember`.
pub async fn join_and_leave_report_the_first_and_last_socket_of_a_user<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn RoomStore>>,
{
    let node_a = make_node().await;
    let node_b = make_node().await;
    let room = new_room("chat:conf");
    assert_eq!(
        node_a
            .join(&room, &member("u1", "s1"), 2, LONG_TTL)
            .await
            .unwrap(),
        JOINED_FIRST,
        "the user's first socket joins as first"
    );
    assert_eq!(
        node_b
            .join(&room, &member("u1", "s4"), 2, LONG_TTL)
            .await
            .unwrap(),
        JoinOutcome::Joined {
            first_for_user: false
        },
        "the user's second socket joins as not first"
    );
    assert_eq!(
        node_a
            .join(&room, &member("u1", "s1"), 2, LONG_TTL)
            .await
            .unwrap(),
        JoinOutcome::AlreadyMember
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
}

/// `members` lists distinct user ids, sorted, from any node; a user who left is not listed.
pub async fn members_are_distinct_and_sorted<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn RoomStore>>,
{
    let node_a = make_node().await;
    let node_b = make_node().await;
    let room = new_room("chat:conf");
    for (user, socket) in [("u2", "s2"), ("u1", "s1"), ("u1", "s4")] {
        node_a
            .join(&room, &member(user, socket), 2, LONG_TTL)
            .await
            .unwrap();
    }
    assert_eq!(
        node_b.members(&room).await.unwrap(),
        vec!["u1".to_owned(), "u2".to_owned()],
        "members are distinct and sorted"
    );
    node_a.leave(&room, &member("u1", "s1")).await.unwrap();
    node_a.leave(&room, &member("u1", "s4")).await.unwrap();
    assert_eq!(
        node_a.members(&room).await.unwrap(),
        vec!["u2".to_owned()],
        "a user whose sockets all left is not a member"
    );
}

/// `join` checks capacity and adds in one atomic step: concurrent joins from two nodes never
/// overfill a room.
pub async fn concurrent_joins_never_overfill_a_room<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn RoomStore>>,
{
    let node_a = make_node().await;
    let node_b = make_node().await;
    let crowded = new_room("chat:crowd");
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
        if attempt.await.unwrap() == JOINED_FIRST {
            joined += 1;
        }
    }
    assert_eq!(
        joined, 10,
        "exactly capacity joins succeed under concurrency"
    );
    assert_eq!(node_a.members(&crowded).await.unwrap().len(), 10);
}

/// Memberships that are not refreshed expire: they stop counting toward capacity, are not
/// listed, and cannot be left; refreshed ones stay.
pub async fn unrefreshed_memberships_expire<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn RoomStore>>,
{
    let node_a = make_node().await;
    let node_b = make_node().await;
    let expiring = new_room("chat:ttl");
    let kept = member("kept", "s-kept");
    let ghost = member("ghost", "s-ghost");
    assert_eq!(
        node_a.join(&expiring, &kept, 2, SHORT_TTL).await.unwrap(),
        JOINED_FIRST
    );
    assert_eq!(
        node_b.join(&expiring, &ghost, 2, SHORT_TTL).await.unwrap(),
        JOINED_FIRST
    );
    assert_eq!(
        node_a
            .join(&expiring, &member("third", "s-third"), 2, SHORT_TTL)
            .await
            .unwrap(),
        JoinOutcome::Full
    );
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let gone = node_a
            .refresh(std::slice::from_ref(&expiring), &kept, SHORT_TTL)
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
            .join(&expiring, &member("third", "s-third"), 2, SHORT_TTL)
            .await
            .unwrap(),
        JOINED_FIRST,
        "an expired membership frees its place"
    );
    assert_eq!(
        node_b.leave(&expiring, &ghost).await.unwrap(),
        LeaveOutcome::NotMember,
        "an expired membership is gone"
    );
}

/// `refresh` never revives a membership that is gone: it reports the room instead, and the
/// membership stays gone.
pub async fn refresh_never_revives_a_gone_membership<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn RoomStore>>,
{
    let node_a = make_node().await;
    let node_b = make_node().await;
    let expiring = new_room("chat:ttl");
    let kept = member("kept", "s-kept");
    let ghost = member("ghost", "s-ghost");
    assert_eq!(
        node_a.join(&expiring, &kept, 2, LONG_TTL).await.unwrap(),
        JOINED_FIRST
    );
    assert_eq!(
        node_b.join(&expiring, &ghost, 2, SHORT_TTL).await.unwrap(),
        JOINED_FIRST
    );
    tokio::time::sleep(SHORT_TTL + Duration::from_millis(200)).await;
    assert_eq!(
        node_b.leave(&expiring, &ghost).await.unwrap(),
        LeaveOutcome::NotMember,
        "an expired membership is gone"
    );
    assert_eq!(
        node_b
            .refresh(std::slice::from_ref(&expiring), &ghost, SHORT_TTL)
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
}

/// Refreshes made at once (a backend may send them as one batch) each extend their own
/// memberships, in every room given, and only those.
pub async fn concurrent_refreshes_extend_their_own_memberships<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn RoomStore>>,
{
    let node_a = &make_node().await;
    let node_b = &make_node().await;
    let rooms = [new_room("chat:busy"), new_room("chat:busy")];
    let members: Vec<Member> = (0..24)
        .map(|n| member(&format!("user-{n:02}"), &format!("socket-{n:02}")))
        .collect();
    // Joined at once, so all of them are well inside their TTL when the refreshes start.
    let joins = members
        .iter()
        .flat_map(|member| rooms.iter().map(move |room| (room, member)))
        .map(|(room, member)| node_a.join(room, member, 100, SHORT_TTL));
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
            node.refresh(&rooms, member, SHORT_TTL)
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
        node_a.refresh(&rooms, lapsed, SHORT_TTL),
        node_a.refresh(&rooms, kept[0], SHORT_TTL)
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

/// A block set on one node refuses the user's joins on every node until it ends, and only
/// that user's.
pub async fn a_blocked_user_cannot_join_until_the_block_ends<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn RoomStore>>,
{
    let node_a = make_node().await;
    let node_b = make_node().await;
    let room = new_room("chat:moderated");
    let ttl = Duration::from_secs(30);
    let troll = member("troll", "s-troll");
    let guest = member("guest", "s-guest");
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
        JOINED_FIRST,
        "others are not blocked"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        node_a.join(&room, &troll, 10, ttl).await.unwrap(),
        JOINED_FIRST,
        "the block ends"
    );
}

/// `sockets` lists each live membership (user, socket, expiry in Unix ms), sorted, from any node.
pub async fn sockets_lists_every_live_membership_with_its_expiry<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn RoomStore>>,
{
    let node_a = make_node().await;
    let node_b = make_node().await;
    let room = new_room("chat:listed");
    let ttl = Duration::from_secs(60);
    for (user, socket) in [("bea", "s2"), ("ann", "s1"), ("bea", "s3")] {
        node_a
            .join(&room, &member(user, socket), 10, ttl)
            .await
            .unwrap();
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

/// Declares module `$module` with one `#[tokio::test]` per room guarantee, each named after it.
/// `$factory` is an expression giving a node factory (`Fn() -> impl Future<Output =
/// Arc<dyn RoomStore>>`); it is evaluated once per test.
/// `rooms_of` lists the rooms a user is in, on any node, sorted: a room appears with the join,
/// stays while another socket of the user is still there, goes with the user's last leave, and
/// goes when the memberships expire unrefreshed; a refresh keeps it. Other users' rooms are not
/// listed.
pub async fn rooms_of_lists_the_rooms_a_user_is_in<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn RoomStore>>,
{
    let guarantee = "rooms_of";
    let node_a = make_node().await;
    let node_b = make_node().await;
    let user = unique("u");
    let other_user = unique("v");
    let (first, second, fleeting) = (
        new_room("chat:ra"),
        new_room("chat:rb"),
        new_room("chat:rc"),
    );
    let on = |socket: &str| member(&user, socket);
    node_a.join(&first, &on("s1"), 10, LONG_TTL).await.unwrap();
    node_b.join(&first, &on("s2"), 10, LONG_TTL).await.unwrap();
    node_b.join(&second, &on("s2"), 10, LONG_TTL).await.unwrap();
    node_a
        .join(&fleeting, &on("s1"), 10, SHORT_TTL)
        .await
        .unwrap();
    node_a
        .join(&fleeting, &member(&other_user, "s9"), 10, LONG_TTL)
        .await
        .unwrap();
    let mut expected = vec![first.to_string(), second.to_string(), fleeting.to_string()];
    expected.sort();
    assert_eq!(
        node_b.rooms_of(&user).await.unwrap(),
        expected,
        "{guarantee}: every node's joins"
    );
    assert_eq!(
        node_a.rooms_of(&other_user).await.unwrap(),
        vec![fleeting.to_string()],
        "{guarantee}: only the user's own rooms"
    );

    node_a.leave(&first, &on("s1")).await.unwrap();
    assert!(
        node_a
            .rooms_of(&user)
            .await
            .unwrap()
            .contains(&first.to_string()),
        "{guarantee}: another socket of the user is still in the room"
    );
    node_b.leave(&second, &on("s2")).await.unwrap();
    tokio::time::sleep(SHORT_TTL + Duration::from_millis(400)).await;
    let mut expected = vec![first.to_string()];
    expected.sort();
    assert_eq!(
        node_a.rooms_of(&user).await.unwrap(),
        expected,
        "{guarantee}: gone with the last leave and with expiry"
    );
    node_b.leave(&first, &on("s2")).await.unwrap();
    assert!(
        node_a.rooms_of(&user).await.unwrap().is_empty(),
        "{guarantee}: nothing once the user left everywhere"
    );

    let kept = new_room("chat:rd");
    node_a.join(&kept, &on("s3"), 10, SHORT_TTL).await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(SHORT_TTL / 2).await;
        node_a
            .refresh(std::slice::from_ref(&kept), &on("s3"), SHORT_TTL)
            .await
            .unwrap();
    }
    assert_eq!(
        node_b.rooms_of(&user).await.unwrap(),
        vec![kept.to_string()],
        "{guarantee}: a refreshed membership keeps its room listed"
    );
}

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
            async fn unrefreshed_memberships_expire() {
                guarantees::unrefreshed_memberships_expire($factory).await;
            }

            #[tokio::test]
            async fn refresh_never_revives_a_gone_membership() {
                guarantees::refresh_never_revives_a_gone_membership($factory).await;
            }

            #[tokio::test]
            async fn concurrent_refreshes_extend_their_own_memberships() {
                guarantees::concurrent_refreshes_extend_their_own_memberships($factory).await;
            }

            #[tokio::test]
            async fn a_blocked_user_cannot_join_until_the_block_ends() {
                guarantees::a_blocked_user_cannot_join_until_the_block_ends($factory).await;
            }

            #[tokio::test]
            async fn sockets_lists_every_live_membership_with_its_expiry() {
                guarantees::sockets_lists_every_live_membership_with_its_expiry($factory).await;
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

    use crate::stores::RoomStore;
    use crate::stores::memory::MemoryRoomStore;

    /// The memory store serves one node: every "node" is the same store.
    fn memory_nodes() -> impl Fn() -> std::future::Ready<Arc<dyn RoomStore>> {
        let shared: Arc<dyn RoomStore> = Arc::new(MemoryRoomStore::new());
        move || std::future::ready(shared.clone())
    }

    crate::room_conformance_tests!(memory_rooms, super::memory_nodes());
}
