//! The hold phase of the load tool: plain threads, each with its own epoll, read the connections
//! handed to them, answer the server's pings, send the `heartbeat` op at the advised interval,
//! time `load.tick` pushes and count presence pushes (`room.user_joined`, `room.user_left`,
//! `room.presence_diff`). On the worker's word they start the leave phase: they close their
//! connections one after another at a set pace, the way users leave, while still reading those
//! not yet closed (which hear the leaves).
//!
//! Not async tasks: the tool shares the cores with the servers it measures, and a task per socket
//! costs a wake, a schedule and a poll per push on top of the read (docs/benchmarks.md, "The load
//! tool"). Here a push costs the read and one pass over its bytes, as in `loopback-floor`'s
//! readers; only presence pushes are parsed, and without allocating per user id.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::wire::{OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG, OPCODE_TEXT, client_frame, frame_at};
use crate::{Histogram, now_micros};

/// Longest wait in epoll: bounds how late a handed-over socket is first read and how long
/// `finish` waits.
const MAX_WAIT: Duration = Duration::from_millis(20);

/// Heartbeats due this soon go out with those due now: one wake-up sends a batch (a heartbeat a
/// few milliseconds early changes nothing), instead of one wake-up per connection.
const HEARTBEAT_SLACK: Duration = Duration::from_millis(10);

/// The close code a leaving client sends (RFC 6455, 7.4.1 "normal closure"): the user left, the
/// connection did not fail.
const NORMAL_CLOSURE: u16 = 1000;

/// What the presence pushes carry, exactly as the server writes it (no spaces). Only frames with
/// one of these are parsed: the check is a scan of the text, the parse is not free.
const PRESENCE_EVENT_MARKERS: [&str; 3] = [
    r#""event":"room.user_joined""#,
    r#""event":"room.user_left""#,
    r#""event":"room.presence_diff""#,
];

/// A joined connection, ready to be held.
pub struct Held {
    pub stream: TcpStream,
    /// Bytes already read past the last frame the connect phase used.
    pub pending: Vec<u8>,
    /// The heartbeat interval the server advised in its `connected` frame.
    pub heartbeat_interval: Duration,
    /// Presence pushes the connect phase read while it waited for the join reply (those after the
    /// reply are still in `pending`).
    pub presence_heard: PresenceTally,
}

/// The part of the run a presence push arrived in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Connecting and holding (and publishing, if any): the pushes announce joins.
    Join,
    /// From the worker's `leave` on: the connections close one after another.
    Leave,
}

/// What one presence push announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PresenceNews {
    pub joins: u64,
    pub leaves: u64,
}

/// The presence pushes heard in one phase, over all connections of a reader (or a worker, or the
/// run).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PresenceTally {
    /// Presence frames received.
    pub frames: u64,
    /// Joins announced: 1 per `room.user_joined`, the length of `joins` per diff.
    pub joins_heard: u64,
    /// Leaves announced: 1 per `room.user_left`, the length of `leaves` per diff.
    pub leaves_heard: u64,
    /// When the last presence frame arrived (µs since the epoch); 0 when none did.
    pub last_frame_us: u64,
}

impl PresenceTally {
    pub fn record(&mut self, news: PresenceNews, arrived_us: u64) {
        self.frames += 1;
        self.joins_heard += news.joins;
        self.leaves_heard += news.leaves;
        self.last_frame_us = self.last_frame_us.max(arrived_us);
    }

    pub fn merge(&mut self, other: &PresenceTally) {
        self.frames += other.frames;
        self.joins_heard += other.joins_heard;
        self.leaves_heard += other.leaves_heard;
        self.last_frame_us = self.last_frame_us.max(other.last_frame_us);
    }

    /// For the worker -> coordinator line.
    pub fn to_json(self) -> Value {
        json!({
            "frames": self.frames,
            "joins_heard": self.joins_heard,
            "leaves_heard": self.leaves_heard,
            "last_frame_us": self.last_frame_us,
        })
    }

    pub fn from_json(value: &Value) -> PresenceTally {
        let field = |name: &str| value[name].as_u64().unwrap_or(0);
        PresenceTally {
            frames: field("frames"),
            joins_heard: field("joins_heard"),
            leaves_heard: field("leaves_heard"),
            last_frame_us: field("last_frame_us"),
        }
    }
}

/// What the readers saw.
pub struct Tally {
    pub delivery: Histogram,
    /// `load.tick` pushes received.
    pub received: u64,
    pub last_arrival_us: u64,
    /// Connections the server closed, or that broke, while held.
    pub dropped: u64,
    /// Connections the leave phase closed (not drops: the tool ended them).
    pub closed: u64,
    /// Presence pushes heard before the leave phase.
    pub presence_join: PresenceTally,
    /// Presence pushes heard during the leave phase.
    pub presence_leave: PresenceTally,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            delivery: Histogram::new(),
            received: 0,
            last_arrival_us: 0,
            dropped: 0,
            closed: 0,
            presence_join: PresenceTally::default(),
            presence_leave: PresenceTally::default(),
        }
    }

    fn merge(&mut self, other: &Tally) {
        self.delivery.merge(&other.delivery);
        self.received += other.received;
        self.last_arrival_us = self.last_arrival_us.max(other.last_arrival_us);
        self.dropped += other.dropped;
        self.closed += other.closed;
        self.presence_join.merge(&other.presence_join);
        self.presence_leave.merge(&other.presence_leave);
    }

    fn presence_in(&mut self, phase: Phase) -> &mut PresenceTally {
        match phase {
            Phase::Join => &mut self.presence_join,
            Phase::Leave => &mut self.presence_leave,
        }
    }
}

/// What the worker tells a reader thread. One channel for both, so that a reader has every
/// connection it was handed before it starts closing them.
enum ToReader {
    /// Hold this connection.
    Hold(Held),
    /// Start the leave phase: close the connections, in the order they were handed over, at
    /// `closes_per_second` from `started`, and say so on `done` once all are closed.
    Leave {
        started: Instant,
        closes_per_second: f64,
        done: mpsc::Sender<()>,
    },
}

/// The reading threads of a worker; connections are dealt to them in turn.
pub struct Readers {
    handoffs: Vec<mpsc::Sender<ToReader>>,
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
            .send(ToReader::Hold(held))
            .ok()
            .context("a reader thread stopped early")
    }

    /// Starts the leave phase: the readers close every connection they hold, at
    /// `closes_per_second` in total (each reader its share: connections are dealt evenly), and
    /// keep reading the others. The answer says when all are closed.
    pub fn start_leaving(&self, closes_per_second: f64) -> anyhow::Result<AllClosed> {
        ensure!(
            closes_per_second > 0.0,
            "the leave phase needs a positive close rate"
        );
        let started = Instant::now();
        let per_reader = closes_per_second / self.handoffs.len() as f64;
        let (done, all_done) = mpsc::channel();
        for reader in &self.handoffs {
            reader
                .send(ToReader::Leave {
                    started,
                    closes_per_second: per_reader,
                    done: done.clone(),
                })
                .ok()
                .context("a reader thread stopped early")?;
        }
        Ok(AllClosed {
            done: all_done,
            readers: self.handoffs.len(),
        })
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

/// The readers' word that the leave phase has closed every connection.
pub struct AllClosed {
    done: mpsc::Receiver<()>,
    readers: usize,
}

impl AllClosed {
    /// Blocks until every reader has closed all its connections. A reader that stopped early
    /// drops its sender, so this cannot wait forever on it.
    pub fn wait(self) {
        for _ in 0..self.readers {
            if self.done.recv().is_err() {
                return;
            }
        }
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
    /// The leave phase sent its Close frame and shut the sending side; the connection stays
    /// until the server closes its side, and what still arrives is not counted (the user has
    /// left).
    closing: bool,
}

/// A reader's leave phase: which connection closes next, and when.
struct Leaving {
    started: Instant,
    closes_per_second: f64,
    /// Closes sent so far; close n is due n / `closes_per_second` after `started`.
    closes: u64,
    /// The next token to close: tokens close in the order they were handed over, which is the
    /// order their users joined.
    next_token: usize,
    /// Told once every connection is closed (then `None`).
    done: Option<mpsc::Sender<()>>,
}

impl Leaving {
    fn next_due(&self) -> Instant {
        self.started + Duration::from_secs_f64(self.closes as f64 / self.closes_per_second)
    }
}

/// A reader thread's state.
struct Reader {
    epoll: Epoll,
    tally: Tally,
    /// Dropped and closed connections leave `None`, so tokens stay valid.
    connections: Vec<Option<Connection>>,
    heartbeats_due: BinaryHeap<Reverse<(Instant, usize)>>,
    /// The `heartbeat` op, framed once.
    heartbeat: Vec<u8>,
    phase: Phase,
    leaving: Option<Leaving>,
    scratch: Vec<u8>,
}

/// A reader thread's loop.
fn read_until_stopped(
    handed: &mpsc::Receiver<ToReader>,
    stop: &AtomicBool,
) -> anyhow::Result<Tally> {
    let mut reader = Reader::new()?;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    while !stop.load(Ordering::Acquire) {
        while let Ok(message) = handed.try_recv() {
            reader.handle_message(message)?;
        }
        reader.close_due();
        let ready = reader.epoll.wait(&mut events, reader.next_wait())?;
        reader.read_events(&events[..ready]);
        reader.send_heartbeats_due();
    }
    Ok(reader.tally)
}

impl Reader {
    fn new() -> anyhow::Result<Reader> {
        Ok(Reader {
            epoll: Epoll::new()?,
            tally: Tally::new(),
            connections: Vec::new(),
            heartbeats_due: BinaryHeap::new(),
            heartbeat: client_frame(OPCODE_TEXT, br#"{"op":"heartbeat"}"#),
            phase: Phase::Join,
            leaving: None,
            scratch: vec![0u8; 64 * 1024],
        })
    }

    fn handle_message(&mut self, message: ToReader) -> anyhow::Result<()> {
        match message {
            ToReader::Hold(held) => self.hold(held),
            ToReader::Leave {
                started,
                closes_per_second,
                done,
            } => {
                self.phase = Phase::Leave;
                self.leaving = Some(Leaving {
                    started,
                    closes_per_second,
                    closes: 0,
                    next_token: 0,
                    done: Some(done),
                });
                Ok(())
            }
        }
    }

    fn hold(&mut self, held: Held) -> anyhow::Result<()> {
        let token = self.connections.len();
        self.epoll.add(&held.stream, token)?;
        self.heartbeats_due
            .push(Reverse((Instant::now() + held.heartbeat_interval, token)));
        self.tally
            .presence_in(self.phase)
            .merge(&held.presence_heard);
        let mut connection = Connection {
            stream: held.stream,
            pending: Vec::new(),
            heartbeat_interval: held.heartbeat_interval,
            closing: false,
        };
        // The connect phase may have read pushes already.
        let alive = receive(
            &mut connection,
            &held.pending,
            now_micros(),
            &mut self.tally,
            self.phase,
        );
        self.connections.push(Some(connection));
        if !alive {
            drop_connection(&mut self.connections[token], &mut self.tally);
        }
        Ok(())
    }

    /// In the leave phase, closes the connections whose turn has come; says so once all are.
    fn close_due(&mut self) {
        let Some(leaving) = self.leaving.as_mut() else {
            return;
        };
        let now = Instant::now();
        while leaving.next_token < self.connections.len() && leaving.next_due() <= now {
            let token = leaving.next_token;
            leaving.next_token += 1;
            // A connection already dropped takes no turn: the pace is of closes sent.
            let Some(connection) = self.connections[token].as_mut() else {
                continue;
            };
            leaving.closes += 1;
            if !start_closing(connection, &mut self.scratch, &mut self.tally, self.phase) {
                drop_connection(&mut self.connections[token], &mut self.tally);
            }
        }
        if leaving.next_token >= self.connections.len()
            && let Some(done) = leaving.done.take()
        {
            // The worker may have stopped waiting (it is told the same by every reader).
            let _ = done.send(());
        }
    }

    /// How long epoll may wait: until the next heartbeat or close is due, at most `MAX_WAIT`.
    fn next_wait(&self) -> Duration {
        let now = Instant::now();
        let until_heartbeat = self
            .heartbeats_due
            .peek()
            .map_or(MAX_WAIT, |Reverse((due, _))| {
                due.saturating_duration_since(now)
            });
        let until_close = self
            .leaving
            .as_ref()
            .filter(|leaving| leaving.next_token < self.connections.len())
            .map_or(MAX_WAIT, |leaving| {
                leaving.next_due().saturating_duration_since(now)
            });
        until_heartbeat.min(until_close).min(MAX_WAIT)
    }

    fn read_events(&mut self, events: &[libc::epoll_event]) {
        for event in events {
            let token = event.u64 as usize;
            let Some(connection) = self.connections[token].as_mut() else {
                continue;
            };
            if connection.closing {
                if !drain_closing(connection, &mut self.scratch) {
                    // The server closed its side after our Close: the leave is done, no drop.
                    self.connections[token] = None;
                }
            } else if !read_ready(connection, &mut self.scratch, &mut self.tally, self.phase) {
                drop_connection(&mut self.connections[token], &mut self.tally);
            }
        }
    }

    fn send_heartbeats_due(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((due, token))) = self.heartbeats_due.peek().copied() {
            if due > now + HEARTBEAT_SLACK {
                break;
            }
            self.heartbeats_due.pop();
            let Some(connection) = self.connections[token].as_mut() else {
                continue;
            };
            // A closing connection has shut its sending side: nothing more goes out on it.
            if connection.closing {
                continue;
            }
            if connection.stream.write_all(&self.heartbeat).is_err() {
                drop_connection(&mut self.connections[token], &mut self.tally);
                continue;
            }
            self.heartbeats_due
                .push(Reverse((due + connection.heartbeat_interval, token)));
        }
    }
}

fn drop_connection(slot: &mut Option<Connection>, tally: &mut Tally) {
    if slot.take().is_some() {
        tally.dropped += 1;
    }
}

/// Starts closing a connection the way a leaving user's client does: first reads what already
/// arrived (heard before the user left), then sends a Close frame with code 1000 and shuts the
/// sending side (the server sees the Close, then the end of the stream). The socket stays
/// watched until the server closes its side, so that the server's own close is no drop. False
/// when the server had ended the connection before: that is a drop.
fn start_closing(
    connection: &mut Connection,
    scratch: &mut [u8],
    tally: &mut Tally,
    phase: Phase,
) -> bool {
    if !read_ready(connection, scratch, tally, phase) {
        return false;
    }
    let close = client_frame(OPCODE_CLOSE, &NORMAL_CLOSURE.to_be_bytes());
    // Failing these still ends the connection for the server (the socket goes at the latest
    // when the reader stops), so the user leaves either way.
    let _ = connection.stream.write_all(&close);
    let _ = connection.stream.shutdown(Shutdown::Write);
    connection.closing = true;
    connection.pending = Vec::new();
    tally.closed += 1;
    true
}

/// Reads and discards what a closing connection still gets: its user has left, so none of it
/// counts. False once the server has closed its side (or the socket broke): the slot can go.
fn drain_closing(connection: &mut Connection, scratch: &mut [u8]) -> bool {
    loop {
        match connection.stream.read(scratch) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::WouldBlock => return true,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Reads everything the socket holds (edge-triggered epoll reports each arrival once). False
/// when the connection ended.
fn read_ready(
    connection: &mut Connection,
    scratch: &mut [u8],
    tally: &mut Tally,
    phase: Phase,
) -> bool {
    loop {
        match connection.stream.read(scratch) {
            Ok(0) => return false,
            Ok(read) => {
                if !receive(connection, &scratch[..read], now_micros(), tally, phase) {
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
fn receive(
    connection: &mut Connection,
    bytes: &[u8],
    arrived_us: u64,
    tally: &mut Tally,
    phase: Phase,
) -> bool {
    if connection.pending.is_empty() {
        // The usual case: whole frames, parsed where they were read.
        let Some(used) = handle_frames(&mut connection.stream, bytes, arrived_us, tally, phase)
        else {
            return false;
        };
        connection.pending.extend_from_slice(&bytes[used..]);
        return true;
    }
    let mut pending = std::mem::take(&mut connection.pending);
    pending.extend_from_slice(bytes);
    let Some(used) = handle_frames(&mut connection.stream, &pending, arrived_us, tally, phase)
    else {
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
    phase: Phase,
) -> Option<usize> {
    let mut used = 0;
    while let Some(frame) = frame_at(&buffer[used..]).ok()? {
        let payload = &buffer[used + frame.payload.start..used + frame.payload.end];
        match frame.opcode {
            OPCODE_TEXT => {
                if let Ok(text) = std::str::from_utf8(payload) {
                    count_push(text, arrived_us, tally, phase);
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

/// Counts a text push: a `load.tick` is timed, a presence push is counted in `phase`, others
/// (replies, other events) are skipped.
fn count_push(text: &str, arrived_us: u64, tally: &mut Tally, phase: Phase) {
    if let Some(sent) = sent_micros(text) {
        tally.delivery.record(arrived_us.saturating_sub(sent));
        tally.received += 1;
        tally.last_arrival_us = tally.last_arrival_us.max(arrived_us);
    } else if let Some(news) = presence_news(text) {
        tally.presence_in(phase).record(news, arrived_us);
    }
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

/// The joins and leaves a presence push announces: `room.user_joined` (one join),
/// `room.user_left` (one leave) or `room.presence_diff` (`data.joins` and `data.leaves`, in any
/// field order). `None` for every other frame. A scan for the event first; then a parse of the
/// top-level fields as borrowed JSON text, so that a diff naming 1,000 users allocates one list
/// of pointers, not 1,000 strings.
pub fn presence_news(text: &str) -> Option<PresenceNews> {
    if !PRESENCE_EVENT_MARKERS
        .iter()
        .any(|marker| text.contains(*marker))
    {
        return None;
    }
    // The parse also makes sure the marker was the push's own `event`, not one inside its data.
    let fields: BTreeMap<&str, &RawValue> = serde_json::from_str(text).ok()?;
    if fields.get("type")?.get() != r#""event""# {
        return None;
    }
    match fields.get("event")?.get() {
        r#""room.user_joined""# => Some(PresenceNews {
            joins: 1,
            leaves: 0,
        }),
        r#""room.user_left""# => Some(PresenceNews {
            joins: 0,
            leaves: 1,
        }),
        r#""room.presence_diff""# => {
            let data: BTreeMap<&str, &RawValue> =
                serde_json::from_str(fields.get("data")?.get()).ok()?;
            Some(PresenceNews {
                joins: list_length(data.get("joins").copied()),
                leaves: list_length(data.get("leaves").copied()),
            })
        }
        _ => None,
    }
}

/// The number of items in a JSON array given as its text; 0 when absent or not an array.
fn list_length(list: Option<&RawValue>) -> u64 {
    list.and_then(|list| serde_json::from_str::<Vec<&RawValue>>(list.get()).ok())
        .map_or(0, |items| items.len() as u64)
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

    #[test]
    fn presence_news_counts_each_announcement_and_the_entries_of_a_diff() {
        let joined = json!({"type":"event","room":"load:load-0","event":"room.user_joined",
            "data":{"userId":"load-1"},"ts":1})
        .to_string();
        let one_join = PresenceNews {
            joins: 1,
            leaves: 0,
        };
        assert_eq!(presence_news(&joined), Some(one_join));
        let left = joined.replace("room.user_joined", "room.user_left");
        let one_leave = PresenceNews {
            joins: 0,
            leaves: 1,
        };
        assert_eq!(presence_news(&left), Some(one_leave));
        // `ts` before `data`, `leaves` before `joins`: the order of fields does not matter.
        let diff = r#"{"type":"event","room":"load:load-0","event":"room.presence_diff","ts":5,"data":{"leaves":["u3"],"joins":["u1","u2"]}}"#;
        let two_joins_one_leave = PresenceNews {
            joins: 2,
            leaves: 1,
        };
        assert_eq!(presence_news(diff), Some(two_joins_one_leave));
        let joins_only =
            r#"{"type":"event","event":"room.presence_diff","data":{"joins":["u1"],"leaves":[]}}"#;
        assert_eq!(presence_news(joins_only), Some(one_join));
        // The marker inside another push's data does not make it a presence push.
        let nested = r#"{"type":"event","event":"load.note","data":{"event":"room.user_joined"}}"#;
        assert_eq!(presence_news(nested), None);
        assert_eq!(presence_news(r#"{"id":1,"ok":true}"#), None);
    }

    #[test]
    fn presence_tallies_cross_the_worker_line_whole() {
        let mut tally = PresenceTally::default();
        tally.record(
            PresenceNews {
                joins: 3,
                leaves: 1,
            },
            1_764_115_200_123_456,
        );
        assert_eq!(PresenceTally::from_json(&tally.to_json()), tally);
        assert_eq!(
            PresenceTally::from_json(&Value::Null),
            PresenceTally::default()
        );
    }

    fn server_text(text: &str) -> Vec<u8> {
        let mut frame = vec![0x81, text.len() as u8];
        frame.extend_from_slice(text.as_bytes());
        frame
    }

    /// A connected loopback pair: the client end non-blocking, as the connect phase leaves it;
    /// the test plays the server on the other.
    fn loopback_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.set_nonblocking(true).unwrap();
        (client, server)
    }

    fn hold(readers: &mut Readers, client: TcpStream, pending: Vec<u8>, heartbeat: Duration) {
        readers
            .hand_over(Held {
                stream: client,
                pending,
                heartbeat_interval: heartbeat,
                presence_heard: PresenceTally::default(),
            })
            .unwrap();
    }

    /// A reader holding one end of a loopback pair; the test plays the server on the other.
    fn held_pair(pending: Vec<u8>, heartbeat_interval: Duration) -> (Readers, TcpStream) {
        let (client, server) = loopback_pair();
        let mut readers = Readers::start(1).unwrap();
        hold(&mut readers, client, pending, heartbeat_interval);
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
        stream.extend(server_text(
            r#"{"type":"event","event":"room.user_joined","data":{"userId":"a"}}"#,
        ));
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
        assert_eq!(tally.presence_join.frames, 1);
        assert_eq!(tally.presence_join.joins_heard, 1);
        assert_eq!(tally.presence_leave, PresenceTally::default());
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

    /// The Close frame a leaving connection sent: masked, code 1000.
    fn assert_normal_close(server: &mut TcpStream) {
        let mut close = [0u8; 8];
        server.read_exact(&mut close).unwrap();
        assert_eq!(close[0], 0x80 | OPCODE_CLOSE);
        assert_eq!(close[1], 0x80 | 2);
        let code: Vec<u8> = close[6..]
            .iter()
            .zip(&close[2..6])
            .map(|(byte, mask)| byte ^ mask)
            .collect();
        assert_eq!(code, NORMAL_CLOSURE.to_be_bytes());
    }

    #[test]
    fn the_leave_phase_closes_in_join_order_and_counts_what_the_others_hear() {
        let mut readers = Readers::start(1).unwrap();
        let (first_client, mut first_server) = loopback_pair();
        let (second_client, mut second_server) = loopback_pair();
        hold(
            &mut readers,
            first_client,
            Vec::new(),
            Duration::from_secs(60),
        );
        hold(
            &mut readers,
            second_client,
            Vec::new(),
            Duration::from_secs(60),
        );
        let joined =
            server_text(r#"{"type":"event","event":"room.user_joined","data":{"userId":"a"}}"#);
        first_server.write_all(&joined).unwrap();
        second_server.write_all(&joined).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // Two closes per second: the first at once, the second half a second later.
        let all_closed = readers.start_leaving(2.0).unwrap();
        assert_normal_close(&mut first_server);
        // Then the end of the stream: the sending side is shut.
        assert_eq!(first_server.read(&mut [0u8; 1]).unwrap(), 0);
        // The member still there hears the leave.
        second_server
            .write_all(&server_text(
                r#"{"type":"event","event":"room.user_left","data":{"userId":"b"}}"#,
            ))
            .unwrap();
        // The server closes its side after the Close, as it should: no drop.
        drop(first_server);
        all_closed.wait();
        assert_normal_close(&mut second_server);
        drop(second_server);
        std::thread::sleep(Duration::from_millis(100));
        let tally = readers.finish().unwrap();
        assert_eq!(tally.closed, 2);
        assert_eq!(tally.dropped, 0);
        assert_eq!(tally.presence_join.frames, 2);
        assert_eq!(tally.presence_join.joins_heard, 2);
        assert_eq!(tally.presence_leave.frames, 1);
        assert_eq!(tally.presence_leave.leaves_heard, 1);
        assert_eq!(tally.presence_leave.joins_heard, 0);
    }
}
