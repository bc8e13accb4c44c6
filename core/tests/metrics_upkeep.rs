//! The metrics recorder's upkeep: a node nobody scrapes must not keep every histogram sample.
//! Its own test binary (so its own process): the recorder is process-global, and memory is
//! measured for the whole process.

use std::time::{Duration, Instant};

/// Resident memory of this process, bytes (Linux).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("resident pages");
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histogram_samples_are_folded_without_a_scrape() {
    realtime_core::metrics::prometheus_handle();
    let _upkeep = realtime_core::metrics::spawn_upkeep();
    let histogram = metrics::histogram!(realtime_core::metrics::REQUEST_SECONDS, "op" => "test");
    // Warm up allocators and the recorder's first blocks.
    for _ in 0..100_000 {
        histogram.record(0.001);
    }
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let before = resident_bytes();
    // 6 million samples (~48 MB as f64s if all were kept) over two upkeep intervals.
    let started = Instant::now();
    for round in 0..12 {
        for _ in 0..500_000 {
            histogram.record(0.002);
        }
        let due = Duration::from_millis(1_000 * (round + 1));
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let grown = resident_bytes().saturating_sub(before);
    // Without the upkeep the process grows by about 94 MiB; with it by 20-25 MiB (what is held
    // between two upkeeps, and the allocator keeping freed blocks). Half the first figure tells
    // the two apart with room for a busy machine.
    assert!(
        grown < 48 * 1024 * 1024,
        "resident memory grew by {} MiB for 6 million unscraped samples",
        grown / (1024 * 1024)
    );
}
