//! Batched membership announcements (`announce = "batched"`): a node gathers the joins and leaves
//! of its own members per room, and once per interval pushes them to the room as one
//! `room.presence_diff` (`{"joins":[..],"leaves":[..]}`), as Phoenix Presence sends diffs.
//!
//! Why: announcing each change reaches every member, so a room of N filling up sends about N²/2
//! frames (12.5 million for 5,000), and a mass disconnect as many again. A diff per interval
//! sends each member one frame per interval and node instead, whatever the rate of changes.
//!
//! Guarantees, per node and room:
//! - A change is pushed within one interval of being recorded (the first change of a quiet room
//!   starts its interval), or at shutdown (`Node::flush_presence_diffs`).
//! - Changes that cancel out within an interval (a join then a leave of the same user, or a leave
//!   then a join) are not pushed: members never saw the first, or still see the user.
//! - A user is in at most one list of a diff; both lists are sorted.
//!
//! Not guaranteed: order between the diffs of different nodes. A user who leaves on one node and
//! joins on another within one interval may reach a member as joined, then left; `presence` is the
//! authoritative list (docs/protocol.md).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::room::RoomId;

/// Most users one `room.presence_diff` frame names; a bigger batch goes out as several frames,
/// so that a storm of joins cannot build one frame beyond what clients accept.
pub const MAX_USERS_PER_DIFF: usize = 1000;

/// A user's net change in a room during the current interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Joined,
    Left,
}

/// What one `room.presence_diff` frame carries.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Diff {
    pub joins: Vec<String>,
    pub leaves: Vec<String>,
}

/// The changes waiting for their room's interval to end.
#[derive(Default)]
pub struct PresenceDiffs {
    pending: Mutex<Pending>,
    /// Woken when a quiet room gets its first change, so the flusher learns its deadline.
    first_change: Notify,
}

#[derive(Default)]
struct Pending {
    /// Room -> user -> net change; a user's entry goes when a later change cancels it.
    changes: HashMap<RoomId, BTreeMap<String, Change>>,
    /// When each room with changes is due, earliest first.
    deadlines: BinaryHeap<Reverse<(Instant, RoomId)>>,
}

impl PresenceDiffs {
    /// Records `user`'s change in `room`; the room's diff goes out `interval` after its first
    /// change since the last diff.
    pub fn record(&self, room: &RoomId, user: &str, change: Change, interval: Duration) {
        let mut pending = self.pending.lock().expect("presence diffs lock");
        let pending = &mut *pending;
        let room_is_quiet = !pending.changes.contains_key(room);
        let users = pending.changes.entry(room.clone()).or_default();
        match users.get(user) {
            // The opposite of a change not yet pushed: together they change nothing.
            Some(earlier) if *earlier != change => {
                users.remove(user);
            }
            _ => {
                users.insert(user.to_owned(), change);
            }
        }
        if room_is_quiet {
            pending
                .deadlines
                .push(Reverse((Instant::now() + interval, room.clone())));
            self.first_change.notify_one();
        }
    }

    /// Waits until at least one room's interval has ended, then takes the diffs of every room
    /// that is due, split into frames of at most [`MAX_USERS_PER_DIFF`] users.
    pub async fn next_due(&self) -> Vec<(RoomId, Diff)> {
        loop {
            let earliest = self.earliest_deadline();
            match earliest {
                None => self.first_change.notified().await,
                Some(deadline) if deadline > Instant::now() => {
                    // A room recorded meanwhile with a shorter interval wakes us earlier.
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {}
                        _ = self.first_change.notified() => {}
                    }
                }
                Some(_) => {
                    let due = self.take_due(Instant::now());
                    if !due.is_empty() {
                        return due;
                    }
                }
            }
        }
    }

    /// Every pending diff, due or not (shutdown: the leaves of the node's last sockets).
    pub fn take_all(&self) -> Vec<(RoomId, Diff)> {
        let mut pending = self.pending.lock().expect("presence diffs lock");
        pending.deadlines.clear();
        let rooms: Vec<_> = pending.changes.drain().collect();
        rooms
            .into_iter()
            .flat_map(|(room, users)| frames_of(users).into_iter().map(move |d| (room.clone(), d)))
            .collect()
    }

    fn earliest_deadline(&self) -> Option<Instant> {
        let pending = self.pending.lock().expect("presence diffs lock");
        pending
            .deadlines
            .peek()
            .map(|Reverse((deadline, _))| *deadline)
    }

    fn take_due(&self, now: Instant) -> Vec<(RoomId, Diff)> {
        let mut pending = self.pending.lock().expect("presence diffs lock");
        let mut due = Vec::new();
        while let Some(Reverse((deadline, _))) = pending.deadlines.peek() {
            if *deadline > now {
                break;
            }
            let Reverse((_, room)) = pending.deadlines.pop().expect("peeked");
            if let Some(users) = pending.changes.remove(&room) {
                due.extend(
                    frames_of(users)
                        .into_iter()
                        .map(|diff| (room.clone(), diff)),
                );
            }
        }
        due
    }
}

/// The frames for one room's net changes: none when everything cancelled out.
fn frames_of(users: BTreeMap<String, Change>) -> Vec<Diff> {
    let mut frames = Vec::new();
    let mut frame = Diff::default();
    for (user, change) in users {
        if frame.joins.len() + frame.leaves.len() == MAX_USERS_PER_DIFF {
            frames.push(std::mem::take(&mut frame));
        }
        match change {
            Change::Joined => frame.joins.push(user),
            Change::Left => frame.leaves.push(user),
        }
    }
    if !frame.joins.is_empty() || !frame.leaves.is_empty() {
        frames.push(frame);
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> RoomId {
        RoomId::parse(name).expect("valid room id")
    }

    const INTERVAL: Duration = Duration::from_millis(100);

    #[tokio::test(start_paused = true)]
    async fn changes_of_one_interval_go_out_as_one_sorted_diff_per_room() {
        let diffs = PresenceDiffs::default();
        diffs.record(&room("chat:a"), "carol", Change::Joined, INTERVAL);
        diffs.record(&room("chat:a"), "bob", Change::Joined, INTERVAL);
        diffs.record(&room("chat:a"), "dave", Change::Left, INTERVAL);
        let started = Instant::now();
        let due = diffs.next_due().await;
        assert_eq!(started.elapsed(), INTERVAL);
        assert_eq!(
            due,
            vec![(
                room("chat:a"),
                Diff {
                    joins: vec!["bob".into(), "carol".into()],
                    leaves: vec!["dave".into()],
                }
            )]
        );
        assert!(diffs.take_all().is_empty(), "nothing stays pending");
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_and_its_opposite_within_an_interval_push_nothing() {
        let diffs = PresenceDiffs::default();
        diffs.record(&room("chat:a"), "bob", Change::Joined, INTERVAL);
        diffs.record(&room("chat:a"), "bob", Change::Left, INTERVAL);
        diffs.record(&room("chat:a"), "carol", Change::Left, INTERVAL);
        diffs.record(&room("chat:a"), "carol", Change::Joined, INTERVAL);
        diffs.record(&room("chat:b"), "dave", Change::Joined, INTERVAL * 2);
        // chat:a cancelled out entirely, so the first diff out is chat:b's.
        let due = diffs.next_due().await;
        assert_eq!(
            due,
            vec![(
                room("chat:b"),
                Diff {
                    joins: vec!["dave".into()],
                    leaves: vec![],
                }
            )]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_room_quiet_again_starts_a_new_interval_with_its_next_change() {
        let diffs = PresenceDiffs::default();
        diffs.record(&room("chat:a"), "bob", Change::Joined, INTERVAL);
        diffs.next_due().await;
        tokio::time::sleep(INTERVAL * 5).await;
        diffs.record(&room("chat:a"), "bob", Change::Left, INTERVAL);
        let started = Instant::now();
        let due = diffs.next_due().await;
        assert_eq!(
            started.elapsed(),
            INTERVAL,
            "not due at once after a quiet spell"
        );
        assert_eq!(due[0].1.leaves, vec!["bob".to_string()]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_interval_recorded_later_is_not_held_up_by_a_longer_one() {
        let diffs = PresenceDiffs::default();
        diffs.record(&room("lobby:slow"), "bob", Change::Joined, INTERVAL * 10);
        let waiter = async {
            tokio::time::sleep(INTERVAL / 2).await;
            diffs.record(&room("chat:fast"), "carol", Change::Joined, INTERVAL);
        };
        let (due, ()) = tokio::join!(diffs.next_due(), waiter);
        assert_eq!(due[0].0, room("chat:fast"));
    }

    #[test]
    fn a_storm_is_split_into_frames_of_at_most_the_cap() {
        let users: BTreeMap<String, Change> = (0..MAX_USERS_PER_DIFF * 2 + 1)
            .map(|index| (format!("user-{index:05}"), Change::Joined))
            .collect();
        let frames = frames_of(users);
        let sizes: Vec<usize> = frames.iter().map(|frame| frame.joins.len()).collect();
        assert_eq!(sizes, vec![MAX_USERS_PER_DIFF, MAX_USERS_PER_DIFF, 1]);
    }

    #[test]
    fn take_all_returns_what_is_not_yet_due() {
        let diffs = PresenceDiffs::default();
        diffs.record(
            &room("chat:a"),
            "bob",
            Change::Left,
            Duration::from_secs(60),
        );
        let all = diffs.take_all();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1.leaves, vec!["bob".to_string()]);
    }
}
