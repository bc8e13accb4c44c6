//! The hold phase of the load tool: plain threads, each with its own epoll, read the connections
//! handed to them, answer the server's pings, send the `heartbeat` op at the advised interval and
//! time `load.tick` pushes.
//!
//! Not async tasks: the tool shares the cores with the servers it measures, and a task per socket
//! costs a wake, a schedule and a poll per push on top of the read (docs/benchmarks.md, "The load
//! tool"). Here a push costs the read and one pass over its bytes, as in `loopback-floor`'s
//! readers.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::wire::{OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG, OPCODE_TEXT, client_frame, frame_at};
use crate::{Histogram, now_micros};

/// Longest wait in epoll: bounds how late a handed-over socket is first read and how long
/// `finish` waits.
const MAX_WAIT: Duration = Duration::from_millis(20);

/// Heartbeats due this soon go out with those due now: one wake-up sends a batch (a heartbeat a
/// few milliseconds early changes nothing), instead of one wake-up per connection.
const HEARTBEAT_SLACK: Duration = Duration::from_millis(10);

/// A joined connection, ready to be held.
pub struct Held {
    pub stream: TcpStream,
    /// Bytes already read past the last frame the connect phase used.
    pub pending: Vec<u8>,
    /// The heartbeat interval the server advised in its `connected` frame.
    pub heartbeat_interval: Duration,
}

/// What the readers saw.
pub struct Tally {
    pub delivery: Histogram,
    /// `load.tick` pushes received.
    pub received: u64,
    pub last_arrival_us: u64,
    /// Connections the server closed, or that broke, while held.
    pub dropped: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            delivery: Histogram::new(),
            received: 0,
            last_arrival_us: 0,
            dropped: 0,
        }
    }

    fn merge(&mut self, other: &Tally) {
        self.delivery.merge(&other.delivery);
        self.received += other.received;
        self.last_arrival_us = self.last_arrival_us.max(other.last_arrival_us);
        self.dropped += other.dropped;
    }
}

/// The reading threads of a worker; connections are dealt to them in turn.
pub struct Readers {
    handoffs: Vec<mpsc::Sender<Held>>,
    threads: Vec<JoinHandle<anyhow::Result<Tally>>>,
    stop: Arc<AtomicBool>,
    next: usize,
}

impl Readers {
    pub fn start(count: usize) -> anyhow::Result<Readers> {
        let stop = Arc::new(AtomicBool::new(false));
        let (mut handoffs, mut threads) = (Vec::new(), Vec::new());
        for _ in 0..count.max(1) {
            let (handoff, handed) = mpsc::channel();
            let stop = stop.clone();
            let thread = std::thread::Builder::new().name("loadgen-reader".into());
            threads.push(thread.spawn(move || read_until_stopped(&handed, &stop))?);
            handoffs.push(handoff);
        }
        Ok(Readers {
            handoffs,
            threads,
            stop,
            next: 0,
        })
    }

    pub fn hand_over(&mut self, held: Held) -> anyhow::Result<()> {
        let reader = &self.handoffs[self.next % self.handoffs.len()];
        self.next += 1;
        reader
            .send(held)
            .ok()
            .context("a reader thread stopped early")
    }

    /// Stops the readers and adds up what they saw.
    pub fn finish(self) -> anyhow::Result<Tally> {
        self.stop.store(true, Ordering::Release);
        let mut total = Tally::new();
        for thread in self.threads {
            let tally = thread
                .join()
                .map_err(|_| anyhow::anyhow!("reader panicked"))??;
            total.merge(&tally);
        }
        Ok(total)
    }
}

/// An epoll instance, closed on drop.
struct Epoll(RawFd);

impl Epoll {
    fn new() -> anyhow::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        ensure!(
            fd >= 0,
            "epoll_create1: {}",
            std::io::Error::last_os_error()
        );
        Ok(Epoll(fd))
    }

    /// Watches `socket` for input (edge-triggered), reported with `token`.
    fn add(&self, socket: &TcpStream, token: usize) -> anyhow::Result<()> {
        let mut interest = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: token as u64,
        };
        // SAFETY: a live epoll and socket descriptor and a valid event.
        let added = unsafe {
            libc::epoll_ctl(
                self.0,
                libc::EPOLL_CTL_ADD,
                socket.as_raw_fd(),
                &mut interest,
            )
        };
        ensure!(added == 0, "epoll_ctl: {}", std::io::Error::last_os_error());
        Ok(())
    }

    /// Tokens of the ready sockets, waiting at most `timeout`.
    fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration) -> anyhow::Result<usize> {
        let timeout_ms = epoll_timeout_ms(timeout);
        // SAFETY: `events` is a valid buffer of the given length.
        let ready = unsafe {
            libc::epoll_wait(self.0, events.as_mut_ptr(), events.len() as i32, timeout_ms)
        };
        if ready < 0 {
            let error = std::io::Error::last_os_error();
            ensure!(
                error.kind() == ErrorKind::Interrupted,
                "epoll_wait: {error}"
            );
            return Ok(0);
        }
        Ok(ready as usize)
    }
}

/// `timeout` in whole milliseconds for `epoll_wait`, rounded up: rounded down, a wait of under
/// a millisecond became 0, and the thread spun until the deadline (with 10,000 connections'
/// heartbeats due one after another, a reader spun most of the time).
fn epoll_timeout_ms(timeout: Duration) -> i32 {
    timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor this value owns.
        unsafe { libc::close(self.0) };
    }
}

/// One held connection in a reader.
struct Connection {
    stream: TcpStream,
    /// Bytes of an incomplete frame.
    pending: Vec<u8>,
    heartbeat_interval: Duration,
}

/// A reader thread's loop.
fn read_until_stopped(handed: &mpsc::Receiver<Held>, stop: &AtomicBool) -> anyhow::Result<Tally> {
    let epoll = Epoll::new()?;
    let mut tally = Tally::new();
    // Dropped connections leave `None`, so tokens stay valid.
    let mut connections: Vec<Option<Connection>> = Vec::new();
    let mut heartbeats_due: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
    let heartbeat = client_frame(OPCODE_TEXT, br#"{"op":"heartbeat"}"#);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut scratch = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Acquire) {
        while let Ok(held) = handed.try_recv() {
            let token = connections.len();
            epoll.add(&held.stream, token)?;
            heartbeats_due.push(Reverse((Instant::now() + held.heartbeat_interval, token)));
            let mut connection = Connection {
                stream: held.stream,
                pending: Vec::new(),
                heartbeat_interval: held.heartbeat_interval,
            };
            // The connect phase may have read pushes already.
            let alive = receive(&mut connection, &held.pending, now_micros(), &mut tally);
            connections.push(Some(connection));
            if !alive {
                drop_connection(&mut connections[token], &mut tally);
            }
        }
        let until_heartbeat = heartbeats_due.peek().map_or(MAX_WAIT, |Reverse((due, _))| {
            due.saturating_duration_since(Instant::now())
        });
        let ready = epoll.wait(&mut events, until_heartbeat.min(MAX_WAIT))?;
        for event in &events[..ready] {
            let token = event.u64 as usize;
            if let Some(connection) = connections[token].as_mut()
                && !read_ready(connection, &mut scratch, &mut tally)
            {
                drop_connection(&mut connections[token], &mut tally);
            }
        }
        let now = Instant::now();
        while let Some(Reverse((due, token))) = heartbeats_due.peek().copied() {
            if due > now + HEARTBEAT_SLACK {
                break;
            }
            heartbeats_due.pop();
            let Some(connection) = connections[token].as_mut() else {
                continue;
            };
            if connection.stream.write_all(&heartbeat).is_err() {
                drop_connection(&mut connections[token], &mut tally);
                continue;
            }
            heartbeats_due.push(Reverse((due + connection.heartbeat_interval, token)));
        }
    }
    Ok(tally)
}

fn drop_connection(slot: &mut Option<Connection>, tally: &mut Tally) {
    if slot.take().is_some() {
        tally.dropped += 1;
    }
}

/// Reads everything the socket holds (edge-triggered epoll reports each arrival once). False
/// when the connection ended.
fn read_ready(connection: &mut Connection, scratch: &mut [u8], tally: &mut Tally) -> bool {
    loop {
        match connection.stream.read(scratch) {
            Ok(0) => return false,
            Ok(read) => {
                if !receive(connection, &scratch[..read], now_micros(), tally) {
                    return false;
                }
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => return true,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Handles the frames in `bytes` (after any incomplete one kept from before). False when the
/// connection must end: a close frame, a broken frame, or a failed write.
fn receive(connection: &mut Connection, bytes: &[u8], arrived_us: u64, tally: &mut Tally) -> bool {
    if connection.pending.is_empty() {
        // The usual case: whole frames, parsed where they were read.
        let Some(used) = handle_frames(&mut connection.stream, bytes, arrived_us, tally) else {
            return false;
        };
        connection.pending.extend_from_slice(&bytes[used..]);
        return true;
    }
    let mut pending = std::mem::take(&mut connection.pending);
    pending.extend_from_slice(bytes);
    let Some(used) = handle_frames(&mut connection.stream, &pending, arrived_us, tally) else {
        return false;
    };
    pending.drain(..used);
    connection.pending = pending;
    true
}

/// Handles each whole frame at the start of `buffer`; returns the bytes they took, or `None`
/// when the connection must end.
fn handle_frames(
    stream: &mut TcpStream,
    buffer: &[u8],
    arrived_us: u64,
    tally: &mut Tally,
) -> Option<usize> {
    let mut used = 0;
    while let Some(frame) = frame_at(&buffer[used..]).ok()? {
        let payload = &buffer[used + frame.payload.start..used + frame.payload.end];
        match frame.opcode {
            OPCODE_TEXT => {
                if let Some(sent) = std::str::from_utf8(payload).ok().and_then(sent_micros) {
                    tally.delivery.record(arrived_us.saturating_sub(sent));
                    tally.received += 1;
                    tally.last_arrival_us = tally.last_arrival_us.max(arrived_us);
                }
            }
            OPCODE_PING => stream.write_all(&client_frame(OPCODE_PONG, payload)).ok()?,
            OPCODE_CLOSE => return None,
            _ => {}
        }
        used += frame.length;
    }
    Some(used)
}

/// The `sent_us` of a `load.tick` push. Read straight from the text rather than by parsing the
/// JSON: the generator shares the cores with the servers, and its own cost per delivery should
/// stay far below theirs.
pub fn sent_micros(text: &str) -> Option<u64> {
    if !text.contains(r#""event":"load.tick""#) {
        return None;
    }
    let (_, after) = text.split_once(r#""sent_us":"#)?;
    let digits = after
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(after.len());
    after[..digits].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::net::TcpListener;

    #[test]
    fn epoll_waits_round_up_so_a_short_wait_is_no_busy_poll() {
        assert_eq!(epoll_timeout_ms(Duration::ZERO), 0);
        assert_eq!(epoll_timeout_ms(Duration::from_micros(300)), 1);
        assert_eq!(epoll_timeout_ms(Duration::from_micros(1001)), 2);
        assert_eq!(epoll_timeout_ms(MAX_WAIT), 20);
    }

    #[test]
    fn sent_micros_reads_load_ticks_only() {
        let push = json!({"type":"event","event":"load.tick","room":"load:load-1",
            "data":{"sent_us":1764115200123456u64,"n":3,"pad":"xx"}})
        .to_string();
        assert_eq!(sent_micros(&push), Some(1_764_115_200_123_456));
        let other = push.replace("load.tick", "room.joined");
        assert_eq!(sent_micros(&other), None);
        assert_eq!(sent_micros(r#"{"event":"load.tick","data":{}}"#), None);
    }

    fn server_text(text: &str) -> Vec<u8> {
        let mut frame = vec![0x81, text.len() as u8];
        frame.extend_from_slice(text.as_bytes());
        frame
    }

    /// A reader holding one end of a loopback pair; the test plays the server on the other.
    fn held_pair(pending: Vec<u8>, heartbeat_interval: Duration) -> (Readers, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.set_nonblocking(true).unwrap();
        let mut readers = Readers::start(1).unwrap();
        readers
            .hand_over(Held {
                stream: client,
                pending,
                heartbeat_interval,
            })
            .unwrap();
        (readers, server)
    }

    #[test]
    fn pushes_split_anywhere_are_all_counted_and_pings_answered() {
        let tick = |n: u64| {
            server_text(&format!(
                r#"{{"event":"load.tick","data":{{"sent_us":{},"n":{n}}}}}"#,
                now_micros()
            ))
        };
        // Half a push arrives with the connect phase's leftover bytes.
        let first = tick(0);
        let (readers, mut server) = held_pair(first[..7].to_vec(), Duration::from_secs(60));
        let mut stream = first[7..].to_vec();
        stream.extend(tick(1));
        stream.extend(server_text(r#"{"event":"room.joined"}"#));
        stream.extend(tick(2));
        // Last, so that its pong shows everything before it was handled.
        stream.extend([0x89, 2, b'h', b'i']);
        for piece in stream.chunks(5) {
            server.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        // The pong comes back, masked.
        let mut answer = [0u8; 8];
        server.read_exact(&mut answer).unwrap();
        assert_eq!(answer[0], 0x80 | OPCODE_PONG);
        assert_eq!(answer[1], 0x80 | 2);
        let unmasked: Vec<u8> = answer[6..]
            .iter()
            .zip(&answer[2..6])
            .map(|(byte, mask)| byte ^ mask)
            .collect();
        assert_eq!(unmasked, b"hi");
        let tally = readers.finish().unwrap();
        assert_eq!(tally.received, 3);
        assert_eq!(tally.delivery.count(), 3);
        assert_eq!(tally.dropped, 0);
    }

    #[test]
    fn heartbeats_leave_at_the_advised_interval() {
        let interval = Duration::from_millis(60);
        let (readers, mut server) = held_pair(Vec::new(), interval);
        let started = Instant::now();
        let mut two_heartbeats = [0u8; 48];
        server.read_exact(&mut two_heartbeats).unwrap();
        // The second leaves at most the slack before it is due.
        assert!(started.elapsed() >= 2 * interval - HEARTBEAT_SLACK);
        for heartbeat in two_heartbeats.chunks(24) {
            assert_eq!(heartbeat[..2], [0x80 | OPCODE_TEXT, 0x80 | 18]);
        }
        assert_eq!(readers.finish().unwrap().dropped, 0);
    }

    #[test]
    fn a_close_from_the_server_counts_as_dropped() {
        let (readers, mut server) = held_pair(Vec::new(), Duration::from_secs(60));
        server.write_all(&[0x88, 2, 0x03, 0xE8]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let tally = readers.finish().unwrap();
        assert_eq!(tally.dropped, 1);
        assert_eq!(tally.received, 0);
    }
}
