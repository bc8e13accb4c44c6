//! File descriptors of a process that holds thousands of sockets: the open-file limit raised to
//! its hard ceiling, and the kernel's descriptor table grown once, up front.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Descriptors kept beyond the sockets a process expects: listeners, the runtime's own, Redis,
/// NATS and database connections, plugin files.
pub const SPARE_DESCRIPTORS: u64 = 1024;

/// Raises the soft open-file limit to the hard limit (every socket is a descriptor) and returns
/// the soft limit now in force, or `None` when it cannot be read.
fn raise_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            tracing::warn!("could not raise the open-file limit");
        }
    }
    Some(limit.rlim_cur)
}

/// Grows this process's descriptor table now so that it holds `descriptors` (capped at
/// `open_file_limit`).
///
/// Linux grows the table by doubling when a new descriptor does not fit (at 64, 128, 256, 512,
/// ... open files) and, in a multi-threaded process, waits for an RCU grace period before
/// freeing the old one: milliseconds, during which the thread in `accept` or `connect` stalls,
/// and every handshake behind it (docs/benchmarks.md, "Handshakes and the descriptor table"). A
/// table never shrinks, so growing it once at startup costs one such wait there and 8 bytes of
/// kernel memory per slot.
fn reserve_descriptor_table(descriptors: u64, open_file_limit: u64) {
    let highest = descriptors.min(open_file_limit).saturating_sub(1);
    let Ok(highest) = libc::c_int::try_from(highest) else {
        tracing::warn!(
            highest,
            "descriptor table not reserved: no such descriptor number"
        );
        return;
    };
    let placeholder = match std::fs::File::open("/dev/null") {
        Ok(file) => file,
        Err(error) => {
            tracing::warn!(%error, "could not reserve the descriptor table");
            return;
        }
    };
    // F_DUPFD takes the lowest free descriptor at or above `highest`, so nothing open is touched;
    // the table has grown to hold it, and stays grown after the copy is closed.
    // SAFETY: fcntl on a descriptor `placeholder` owns.
    let copy = unsafe { libc::fcntl(placeholder.as_raw_fd(), libc::F_DUPFD_CLOEXEC, highest) };
    if copy < 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, "could not reserve the descriptor table");
        return;
    }
    // SAFETY: `copy` is a descriptor fcntl just made and nothing else owns; dropping closes it.
    drop(unsafe { OwnedFd::from_raw_fd(copy) });
}

/// Prepares this process for `sockets` sockets: raises the open-file limit and grows the
/// descriptor table for them plus [`SPARE_DESCRIPTORS`]. Returns the open-file limit in force
/// (`None` when it cannot be read; then nothing is reserved).
pub fn reserve_for_sockets(sockets: u64) -> Option<u64> {
    let open_file_limit = raise_open_file_limit()?;
    reserve_descriptor_table(sockets.saturating_add(SPARE_DESCRIPTORS), open_file_limit);
    Some(open_file_limit)
}

/// The size of this process's descriptor table (`FDSize` in `/proc/self/status`).
pub fn descriptor_table_size() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("FDSize:"))
        .and_then(|size| size.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_grown_to_the_reserved_size_and_nothing_stays_open() {
        let limit = raise_open_file_limit().unwrap();
        // Test machines allow thousands of files; the table starts far smaller than this.
        let wanted = limit.min(20_000);
        assert!(wanted >= 1024, "open-file limit {limit}");
        let size_before = descriptor_table_size().unwrap();
        assert!(size_before < wanted, "already {size_before} slots");
        reserve_descriptor_table(wanted, limit);
        assert!(descriptor_table_size().unwrap() >= wanted);
        // The copy that grew the table sat at the top of it and is closed again (other tests in
        // this process open and close low descriptors meanwhile, so only the top is checked).
        let highest_open = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap();
        assert!(
            highest_open < wanted - 1,
            "descriptor {highest_open} left open"
        );
    }
}
