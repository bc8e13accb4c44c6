//! Giving memory back to the operating system after many connections end.
//!
//! glibc's allocator keeps what a program frees for reuse: a node that held 8,000 connections
//! and saw them leave keeps most of their memory resident, and after repeated cycles of
//! connects and disconnects it settles at about twice its connected peak (docs/benchmarks.md,
//! "Churn"), because the freed blocks are spread over the allocator's per-thread arenas and
//! interleaved with live ones, so they are never at the top of a heap where glibc trims by
//! itself. `malloc_trim` releases the free pages inside the heaps too. It walks every arena, so
//! it runs only after the node's connection count fell by a good share, not on a timer alone.
//!
//! And once more when the users who left have gone offline: presence keeps a user who left for
//! `presence.ttl_secs` (the linger before `user.offline`). Those entries were allocated among
//! the connections' memory, one or two small blocks per user, and until they are freed nearly
//! every page the connections used still holds one, so little of it can be released at the
//! first trim (docs/benchmarks.md, "Churn": 48 MB after the first trim, 26 MB after the second).

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often the connection count is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(10);
/// A trim follows a fall of at least this many connections since the last look at the peak...
const MIN_FALL: usize = 1_000;

/// Whether the connection count fell enough since `peak` to be worth a trim: by [`MIN_FALL`] and
/// by at least a quarter of the peak (a node of 100,000 does not trim for every thousand).
pub fn worth_trimming(peak: usize, now: usize) -> bool {
    let fall = peak.saturating_sub(now);
    fall >= MIN_FALL && fall * 4 >= peak
}

/// When to trim, from the connection count looked at every [`CHECK_EVERY`]: after a large
/// fall, and once more when the users who left have stopped lingering in presence.
#[derive(Debug)]
pub struct TrimSchedule {
    /// The highest count since the last trim for a fall.
    peak: usize,
    /// How long presence keeps a user who left (its linger and one sweep).
    linger: Duration,
    /// When the follow-up trim for the last fall is due.
    follow_up_at: Option<Instant>,
}

/// Why a trim is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrimReason {
    ConnectionsFell,
    LeaversWentOffline,
}

impl TrimSchedule {
    pub fn new(connections: usize, linger: Duration) -> TrimSchedule {
        TrimSchedule {
            peak: connections,
            linger,
            follow_up_at: None,
        }
    }

    /// Whether to trim, given the count at `now`.
    pub fn due(&mut self, connections: usize, now: Instant) -> Option<TrimReason> {
        if worth_trimming(self.peak, connections) {
            self.peak = connections;
            // A later fall moves the follow-up: one trim after the last leavers went offline.
            self.follow_up_at = Some(now + self.linger);
            return Some(TrimReason::ConnectionsFell);
        }
        self.peak = self.peak.max(connections);
        if self.follow_up_at.is_some_and(|at| now >= at) {
            self.follow_up_at = None;
            return Some(TrimReason::LeaversWentOffline);
        }
        None
    }
}

/// Watches `connections()` and trims the allocator when [`TrimSchedule`] says so, until
/// `shutdown`. `presence_linger`: how long presence keeps a user who left (its TTL and a sweep).
pub fn spawn_trimmer(
    connections: impl Fn() -> usize + Send + 'static,
    presence_linger: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut schedule = TrimSchedule::new(connections(), presence_linger);
        let mut ticks = tokio::time::interval(CHECK_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let now = connections();
            if let Some(reason) = schedule.due(now, Instant::now()) {
                // Blocking for milliseconds on a large heap: off the runtime's workers.
                let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
                tracing::debug!(now, released, ?reason, "allocator trimmed");
            }
        }
    })
}

/// What the allocator holds, in bytes: what the program uses, what it freed and the allocator
/// keeps for reuse, and what sits in separately mapped large blocks (glibc's `mallinfo2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapUsage {
    /// Handed out and not freed (heap blocks and mapped blocks).
    pub in_use: u64,
    /// Freed and kept in the heaps for reuse (resident where it was touched and not trimmed).
    pub free: u64,
    /// Of `in_use`, the large blocks mapped apart from the heaps (returned at once when freed).
    pub mapped: u64,
}

/// The allocator's own account (every arena); `None` with allocators that do not give one.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn heap_usage() -> Option<HeapUsage> {
    // SAFETY: mallinfo2 has no preconditions; it takes each arena's lock to sum its bins.
    let info = unsafe { libc::mallinfo2() };
    Some(HeapUsage {
        in_use: (info.uordblks + info.hblkhd) as u64,
        free: info.fordblks as u64,
        mapped: info.hblkhd as u64,
    })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn heap_usage() -> Option<HeapUsage> {
    None
}

/// Returns free memory at the top and inside the allocator's heaps to the system; true when
/// some was released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim has no preconditions; it only takes the allocator's own locks.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators (musl, macOS) return memory by their own rules.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn heap_usage_counts_a_live_allocation_as_in_use() {
        let before = heap_usage().expect("glibc gives an account");
        let block = vec![7u8; 4 << 20];
        let during = heap_usage().expect("glibc gives an account");
        assert!(
            during.in_use >= before.in_use + (4 << 20),
            "{before:?} -> {during:?}"
        );
        drop(block);
    }

    /// A schedule with the default linger (60 s TTL and a 2 s sweep) that starts at
    /// `connections`, and the instant `seconds` after its start.
    fn schedule_from(connections: usize) -> (TrimSchedule, impl Fn(u64) -> Instant) {
        let start = Instant::now();
        let schedule = TrimSchedule::new(connections, Duration::from_secs(62));
        (schedule, move |seconds| {
            start + Duration::from_secs(seconds)
        })
    }

    #[test]
    fn a_fall_is_trimmed_at_once_and_again_when_the_leavers_went_offline() {
        let (mut schedule, at) = schedule_from(0);
        assert_eq!(schedule.due(8_000, at(10)), None, "connections grew");
        assert_eq!(schedule.due(0, at(20)), Some(TrimReason::ConnectionsFell));
        assert_eq!(schedule.due(0, at(30)), None);
        assert_eq!(schedule.due(0, at(81)), None, "still lingering");
        assert_eq!(
            schedule.due(0, at(82)),
            Some(TrimReason::LeaversWentOffline)
        );
        assert_eq!(schedule.due(0, at(92)), None, "one follow-up per fall");
        assert_eq!(schedule.due(0, at(500)), None);
    }

    #[test]
    fn a_second_fall_moves_the_follow_up_after_its_own_leavers() {
        let (mut schedule, at) = schedule_from(8_000);
        assert_eq!(
            schedule.due(4_000, at(10)),
            Some(TrimReason::ConnectionsFell)
        );
        assert_eq!(schedule.due(0, at(40)), Some(TrimReason::ConnectionsFell));
        assert_eq!(
            schedule.due(0, at(72)),
            None,
            "the first fall's deadline passed"
        );
        assert_eq!(
            schedule.due(0, at(102)),
            Some(TrimReason::LeaversWentOffline)
        );
    }

    #[test]
    fn only_a_large_fall_is_worth_a_trim() {
        assert!(worth_trimming(8_000, 0), "everyone left");
        assert!(worth_trimming(8_000, 6_000), "a quarter left");
        assert!(!worth_trimming(8_000, 7_500), "a few hundred left");
        assert!(!worth_trimming(800, 0), "too few to matter");
        assert!(
            !worth_trimming(100_000, 98_000),
            "a small share of a big node"
        );
        assert!(!worth_trimming(5_000, 6_000), "connections grew");
    }
}
