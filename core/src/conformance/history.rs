//! The `HistoryStore` guarantees (see `stores::history`), one function per guarantee, so that a
//! failure names the guarantee it broke. Each takes a factory that attaches one more node to the
//! same backend (for the memory store: the same store again, since it serves one node).
//!
//! Room types: the suites use three fixed types with fixed policies ([`SMALL`], [`BIG`],
//! [`SHORT_LIVED`]), so that a backend keeping one stream or table per room type keeps a few
//! across runs rather than one per run; room names are random per run.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::Frame;
use crate::room::RoomId;
use crate::stores::{HistoryPolicy, HistoryStore, Position, Recovery};

/// `history_small`: five events per room, no age limit.
pub const SMALL: (&str, HistoryPolicy) = ("history_small", HistoryPolicy { size: 5, ttl: None });
/// `history_big`: a thousand events per room, no age limit.
pub const BIG: (&str, HistoryPolicy) = (
    "history_big",
    HistoryPolicy {
        size: 1000,
        ttl: None,
    },
);
/// `history_short`: events live one second.
pub const SHORT_LIVED: (&str, HistoryPolicy) = (
    "history_short",
    HistoryPolicy {
        size: 100,
        ttl: Some(Duration::from_secs(1)),
    },
);

fn room_of(kind: (&str, HistoryPolicy)) -> (RoomId, HistoryPolicy) {
    let room = RoomId::parse(&format!("{}:{}", kind.0, super::unique("r"))).unwrap();
    (room, kind.1)
}

/// The frame an event at `position` is stored as in these suites.
fn event_frame(room: &RoomId, label: &str, position: &Position) -> Frame {
    super::frame(&format!(
        r#"{{"type":"event","event":"e","room":"{room}","data":"{label}","offset":{},"epoch":"{}"}}"#,
        position.offset, position.epoch
    ))
}

async fn append(
    store: &Arc<dyn HistoryStore>,
    room: &RoomId,
    policy: &HistoryPolicy,
    label: &str,
) -> (Position, Frame) {
    let encode = |position: &Position| event_frame(room, label, position);
    store
        .append(room, policy, &encode)
        .await
        .unwrap_or_else(|error| panic!("append {label}: {error}"))
}

fn recovered(recovery: Recovery, guarantee: &str) -> (Position, Vec<Frame>) {
    match recovery {
        Recovery::Recovered { position, events } => (position, events),
        Recovery::NotRecovered { position } => {
            panic!("{guarantee}: expected recovery, got NotRecovered at {position:?}")
        }
    }
}

fn not_recovered(recovery: Recovery, guarantee: &str) -> Position {
    match recovery {
        Recovery::NotRecovered { position } => position,
        Recovery::Recovered { events, .. } => {
            panic!(
                "{guarantee}: expected NotRecovered, got {} events",
                events.len()
            )
        }
    }
}

/// Contiguous offsets: 4 tasks on each of two nodes append 25 events each to one room at the
/// same moment; the 200 offsets are 1..=200, each exactly once, in one epoch.
pub async fn offsets_are_contiguous_under_concurrent_appends<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn HistoryStore>>,
{
    let guarantee = "contiguous offsets";
    let nodes = [make_node().await, make_node().await];
    let (room, policy) = room_of(BIG);
    let mut tasks = Vec::new();
    for (node_index, node) in nodes.iter().enumerate() {
        for task in 0..4 {
            let (node, room) = (node.clone(), room.clone());
            tasks.push(tokio::spawn(async move {
                let mut positions = Vec::new();
                for event in 0..25 {
                    let label = format!("n{node_index}t{task}e{event}");
                    positions.push(append(&node, &room, &policy, &label).await.0);
                }
                positions
            }));
        }
    }
    let mut positions = Vec::new();
    for task in tasks {
        positions.extend(task.await.expect("append task"));
    }
    let epoch = positions[0].epoch.clone();
    assert!(
        positions.iter().all(|position| position.epoch == epoch),
        "{guarantee}: one epoch expected, got {positions:?}"
    );
    let mut offsets: Vec<u64> = positions.iter().map(|position| position.offset).collect();
    offsets.sort_unstable();
    assert_eq!(
        offsets,
        (1..=200).collect::<Vec<u64>>(),
        "{guarantee}: offsets must be 1..=200, each once"
    );
}

/// What was stored is what is replayed: `since` and `latest` give back the frames `append`
/// returned, byte for byte, in offset order, on any node.
pub async fn stored_frames_are_replayed_exactly<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn HistoryStore>>,
{
    let guarantee = "what was stored is replayed";
    let writer = make_node().await;
    let reader = make_node().await;
    let (room, policy) = room_of(BIG);
    let mut stored = Vec::new();
    for label in ["a", "b", "c", "d"] {
        stored.push(append(&writer, &room, &policy, label).await);
    }
    let (latest_position, latest) = reader.latest(&room, &policy, 10).await.unwrap();
    assert_eq!(latest_position, stored[3].0, "{guarantee}: latest position");
    let bytes = |frames: &[Frame]| -> Vec<bytes::Bytes> {
        frames.iter().map(|frame| frame.bytes().clone()).collect()
    };
    let stored_frames: Vec<Frame> = stored.iter().map(|(_, frame)| frame.clone()).collect();
    assert_eq!(bytes(&latest), bytes(&stored_frames), "{guarantee}: latest");
    let (_, last_two) = reader.latest(&room, &policy, 2).await.unwrap();
    assert_eq!(
        bytes(&last_two),
        bytes(&stored_frames[2..]),
        "{guarantee}: latest(2)"
    );
    let since = reader.since(&room, &policy, &stored[0].0).await.unwrap();
    let (position, events) = recovered(since, guarantee);
    assert_eq!(position, stored[3].0, "{guarantee}: since position");
    assert_eq!(
        bytes(&events),
        bytes(&stored_frames[1..]),
        "{guarantee}: since"
    );
}

/// Exact recovery, including from an empty room: the position given for a room with no event
/// names an epoch that its first events continue, so `since` that position recovers them; at
/// the newest position, `since` recovers nothing.
pub async fn recovery_from_an_empty_room_and_from_the_newest_position<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn HistoryStore>>,
{
    let guarantee = "exact recovery";
    let node_a = make_node().await;
    let node_b = make_node().await;
    let (room, policy) = room_of(BIG);
    let empty = node_a.position(&room, &policy).await.unwrap();
    assert_eq!(empty.offset, 0, "{guarantee}: an empty room is at offset 0");
    assert_eq!(
        node_b.position(&room, &policy).await.unwrap(),
        empty,
        "{guarantee}: every node gives an empty room the same epoch"
    );
    let first = append(&node_b, &room, &policy, "first").await;
    let second = append(&node_a, &room, &policy, "second").await;
    assert_eq!(
        first.0,
        Position {
            offset: 1,
            epoch: empty.epoch.clone()
        },
        "{guarantee}: the first event continues the empty room's epoch"
    );
    let (position, events) = recovered(
        node_a.since(&room, &policy, &empty).await.unwrap(),
        guarantee,
    );
    assert_eq!(position, second.0);
    assert_eq!(events.len(), 2, "{guarantee}: both events since the join");
    assert_eq!(events[0].bytes(), first.1.bytes());
    assert_eq!(events[1].bytes(), second.1.bytes());
    let (position, events) = recovered(
        node_b.since(&room, &policy, &second.0).await.unwrap(),
        guarantee,
    );
    assert_eq!(position, second.0);
    assert!(events.is_empty(), "{guarantee}: nothing after the newest");
}

/// Honest refusal: another epoch, a position ahead of the room, and a position whose following
/// events are no longer kept (beyond `size`) all answer `NotRecovered` with the room's position.
pub async fn unservable_positions_are_refused<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn HistoryStore>>,
{
    let guarantee = "honest refusal";
    let node = make_node().await;
    let (room, policy) = room_of(SMALL);
    let mut last = None;
    for index in 0..8 {
        last = Some(append(&node, &room, &policy, &format!("e{index}")).await.0);
    }
    let last = last.unwrap();
    let other_epoch = Position {
        offset: 7,
        epoch: Arc::from("not-this-rooms-epoch"),
    };
    let ahead = Position {
        offset: 9,
        epoch: last.epoch.clone(),
    };
    // Offsets 3..=8 would be needed; only the last five (4..=8) are kept.
    let too_old = Position {
        offset: 2,
        epoch: last.epoch.clone(),
    };
    for (what, since) in [
        ("another epoch", other_epoch),
        ("ahead of the room", ahead),
        ("older than the window", too_old),
    ] {
        let position = not_recovered(
            node.since(&room, &policy, &since).await.unwrap(),
            &format!("{guarantee}: {what}"),
        );
        assert_eq!(position, last, "{guarantee}: {what}: the room's position");
    }
    let just_in = Position {
        offset: 3,
        epoch: last.epoch.clone(),
    };
    let (_, events) = recovered(
        node.since(&room, &policy, &just_in).await.unwrap(),
        "the oldest kept events are still served",
    );
    assert_eq!(events.len(), 5);
}

/// Bounded: at most `size` events are kept; events older than `ttl` are dropped, and once a
/// room's every event is gone its next event starts a new epoch at offset 1.
pub async fn history_is_bounded_by_size_and_age<F, Fut>(make_node: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn HistoryStore>>,
{
    let guarantee = "bounded";
    let node = make_node().await;
    let (room, policy) = room_of(SMALL);
    for index in 0..9 {
        append(&node, &room, &policy, &format!("e{index}")).await;
    }
    let (_, kept) = node.latest(&room, &policy, 100).await.unwrap();
    assert_eq!(kept.len(), policy.size, "{guarantee}: size");

    let (room, policy) = room_of(SHORT_LIVED);
    let (old, _) = append(&node, &room, &policy, "old").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, kept) = node.latest(&room, &policy, 100).await.unwrap();
    assert!(kept.is_empty(), "{guarantee}: expired events are dropped");
    let before = Position {
        offset: 0,
        epoch: old.epoch.clone(),
    };
    not_recovered(
        node.since(&room, &policy, &before).await.unwrap(),
        "an expired event cannot be recovered",
    );
    let (fresh, _) = append(&node, &room, &policy, "fresh").await;
    assert_ne!(
        fresh.epoch, old.epoch,
        "{guarantee}: a room whose history was lost starts a new epoch"
    );
    assert_eq!(
        fresh.offset, 1,
        "{guarantee}: a new epoch starts at offset 1"
    );
}

/// Declares module `$module` with one `#[tokio::test]` per history guarantee, each named after
/// it. `$factory` is an expression giving a node factory (`Fn() -> impl Future<Output =
/// Arc<dyn HistoryStore>>`); it is evaluated once per test.
#[macro_export]
macro_rules! history_conformance_tests {
    ($module:ident, $factory:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            use $crate::conformance::history as guarantees;

            #[tokio::test]
            async fn offsets_are_contiguous_under_concurrent_appends() {
                guarantees::offsets_are_contiguous_under_concurrent_appends($factory).await;
            }

            #[tokio::test]
            async fn stored_frames_are_replayed_exactly() {
                guarantees::stored_frames_are_replayed_exactly($factory).await;
            }

            #[tokio::test]
            async fn recovery_from_an_empty_room_and_from_the_newest_position() {
                guarantees::recovery_from_an_empty_room_and_from_the_newest_position($factory)
                    .await;
            }

            #[tokio::test]
            async fn unservable_positions_are_refused() {
                guarantees::unservable_positions_are_refused($factory).await;
            }

            #[tokio::test]
            async fn history_is_bounded_by_size_and_age() {
                guarantees::history_is_bounded_by_size_and_age($factory).await;
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::stores::HistoryStore;
    use crate::stores::memory::MemoryHistory;

    /// The memory store serves one node: every "node" is the same store.
    fn memory_nodes() -> impl Fn() -> std::future::Ready<Arc<dyn HistoryStore>> {
        let shared: Arc<dyn HistoryStore> = Arc::new(MemoryHistory::new());
        move || std::future::ready(shared.clone())
    }

    crate::history_conformance_tests!(memory_history, super::memory_nodes());
}
