//! Loopback floor: the cheapest fan-out this machine can do, as a yardstick for the server's
//! delivery latency. No WebSocket, and plain blocking writes: `--writers` threads (standing in
//! for the nodes) each own a share of the server-side sockets and write every broadcast to them
//! with one blocking `write` each; `--readers` threads (standing in for the load
//! generator's workers) read the client sides through epoll. Sockets are dealt as the load tool
//! deals its connections: a reader holds a contiguous block of them and a writer every
//! `writers`-th one, so each reader hears from every writer. Each broadcast is a fixed-size message
//! whose first 8 bytes are its send time; the report is one JSON line of delivery latency
//! percentiles.
//!
//! The broadcasts reach the writers through an in-process channel, or with `--nats URL` through
//! NATS (one connection and subscription per writer, as each node has; each writer thread then
//! runs a single-threaded tokio runtime for its NATS client and writes from it): the floor of a
//! fan-out fed by NATS, the broker hop included. With `--relay` as well, a broadcast takes the
//! product's path through NATS: published on an inbound subject that the writers share as a
//! queue group, so one of them takes it and republishes it on the fan-out subject, which every
//! writer subscribes to. That is two broker hops, as `realtime.room.<id>` has: one node of the
//! queue group validates the event, runs the room type's plugins and encodes the frame once, then
//! publishes it to every node with a member.
//!
//! ```sh
//! cargo run --release -p realtime-examples --bin loopback-floor -- --members 1000
//! ```
//! With `--reader-processes`, each reader runs in a process of its own, as the load tool's workers
//! are processes apart from the nodes: a delivery then wakes a thread of another process.
//!
//! It only uses 127.0.0.1 (and NATS on loopback) and stops after `--messages` broadcasts.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use clap::Parser;
use futures_util::StreamExt;
use serde_json::json;

#[path = "loopback_nats.rs"]
mod loopback_nats;

#[derive(Parser)]
// A flag given twice takes its last value, so `examples/bench.sh floor --flag value` overrides.
#[command(args_override_self = true)]
struct Args {
    /// Recipients of every broadcast (socket pairs on 127.0.0.1).
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// Writing threads; each writes to members / writers sockets (two nodes: 2).
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Reading threads, each with its own epoll (the load generator's worker processes: 2).
    #[arg(long, default_value_t = 2)]
    readers: usize,
    /// Broadcasts in total.
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Broadcasts per second.
    #[arg(long, default_value_t = 50)]
    publish_rate: u32,
    /// Bytes per message (the load tool's 256 B payload is a ~330 B WebSocket frame).
    #[arg(long, default_value_t = 330)]
    message_bytes: usize,
    /// Feed the writers through this NATS server (loopback only) instead of a channel.
    #[arg(long)]
    nats: Option<String>,
    /// With `--nats`: publish on an inbound subject that one writer of a queue group relays to
    /// the fan-out subject (two broker hops, the product's path).
    #[arg(long, requires = "nats")]
    relay: bool,
    /// Run each reader in a process of its own (forked once the sockets are made) instead of a
    /// thread of this one, as the load tool's workers are processes apart from the nodes.
    #[arg(long)]
    reader_processes: bool,
    /// Writers give up the CPU after every this many writes but the last, as the server's
    /// fan-out does after 64 (0: never).
    #[arg(long, default_value_t = 0)]
    yield_every: usize,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as u64)
        .unwrap_or(0)
}

/// Where a socket's byte stream is within its fixed-size messages: a read may end anywhere,
/// even inside a message's send time.
#[derive(Clone, Default)]
struct MessageCursor {
    /// Bytes of the current message seen so far.
    seen: usize,
    /// The current message's first 8 bytes (its send time), gathered across reads.
    stamp: [u8; 8],
}

impl MessageCursor {
    /// Takes the next bytes of the stream, calling `on_stamp` with the send time of each message
    /// whose stamp they complete.
    fn take(&mut self, bytes: &[u8], message_bytes: usize, mut on_stamp: impl FnMut(u64)) {
        let mut position = 0;
        while position < bytes.len() {
            let left = bytes.len() - position;
            if self.seen < 8 {
                let count = (8 - self.seen).min(left);
                self.stamp[self.seen..self.seen + count]
                    .copy_from_slice(&bytes[position..position + count]);
                self.seen += count;
                position += count;
                if self.seen == 8 {
                    on_stamp(u64::from_le_bytes(self.stamp));
                }
            } else {
                let count = (message_bytes - self.seen).min(left);
                self.seen += count;
                position += count;
            }
            if self.seen == message_bytes {
                self.seen = 0;
            }
        }
    }
}

/// Reads its sockets until it has seen `expected` messages; returns their latencies (µs).
fn read_all(
    mut sockets: Vec<TcpStream>,
    message_bytes: usize,
    expected: usize,
) -> anyhow::Result<Vec<u64>> {
    // SAFETY: plain epoll calls on descriptors owned by `sockets`, which outlive the epoll.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    ensure!(
        epoll >= 0,
        "epoll_create1: {}",
        std::io::Error::last_os_error()
    );
    for (index, socket) in sockets.iter().enumerate() {
        socket.set_nonblocking(true)?;
        let mut interest = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: index as u64,
        };
        // SAFETY: as above.
        let added = unsafe {
            libc::epoll_ctl(
                epoll,
                libc::EPOLL_CTL_ADD,
                socket.as_raw_fd(),
                &mut interest,
            )
        };
        ensure!(added == 0, "epoll_ctl: {}", std::io::Error::last_os_error());
    }
    let mut latencies = Vec::with_capacity(expected);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buffer = vec![0u8; 64 * 1024];
    let mut cursors = vec![MessageCursor::default(); sockets.len()];
    while latencies.len() < expected {
        // SAFETY: `events` has room for 256 entries.
        let ready = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), 256, 10_000) };
        ensure!(ready > 0, "no delivery for 10 s");
        for event in &events[..ready as usize] {
            let index = event.u64 as usize;
            loop {
                match sockets[index].read(&mut buffer) {
                    Ok(0) => anyhow::bail!("socket closed"),
                    Ok(read) => {
                        let arrived = now_micros();
                        cursors[index].take(&buffer[..read], message_bytes, |sent| {
                            latencies.push(arrived.saturating_sub(sent))
                        });
                    }
                    Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                    Err(error) => return Err(error.into()),
                }
            }
        }
    }
    // SAFETY: closing the epoll descriptor made above.
    unsafe { libc::close(epoll) };
    Ok(latencies)
}

fn quantile_ms(sorted: &[u64], quantile: f64) -> f64 {
    let index = ((sorted.len() as f64 * quantile).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index] as f64 / 1000.0
}

/// `members` connected pairs on 127.0.0.1: (client sides, server sides).
fn socket_pairs(members: usize) -> anyhow::Result<(Vec<TcpStream>, Vec<TcpStream>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let (mut client_sides, mut server_sides) = (Vec::new(), Vec::new());
    for _ in 0..members {
        let client = TcpStream::connect(address)?;
        let (server, _) = listener.accept()?;
        // As the realtime server and the load tool do.
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        client_sides.push(client);
        server_sides.push(server);
    }
    Ok((client_sides, server_sides))
}

/// Socket `i` goes to writer `i % writers`, as the load tool spreads connection `i` over the
/// nodes round-robin while each of its workers opens a contiguous block.
fn deal_to_writers(server_sides: Vec<TcpStream>, writers: usize) -> Vec<Vec<TcpStream>> {
    let mut shares: Vec<Vec<TcpStream>> = (0..writers).map(|_| Vec::new()).collect();
    for (index, socket) in server_sides.into_iter().enumerate() {
        shares[index % writers].push(socket);
    }
    shares.retain(|share| !share.is_empty());
    shares
}

/// Whether to give up the CPU after the write to recipient `index` of `total`: after every
/// `yield_every`-th, not after the last (0: never). The same rule as the server's
/// `server.fanout_yield_every`, written out here so that the floor does not depend on the
/// server's internals.
fn yields_after(index: usize, total: usize, yield_every: usize) -> bool {
    yield_every > 0 && index % yield_every == yield_every - 1 && index + 1 < total
}

/// Writes one broadcast to every socket of a writer's share, yielding the CPU by the rule above
/// (`yield_every` 0: never); false once a socket failed.
fn write_to_all(share: &mut [TcpStream], message: &[u8], yield_every: usize) -> bool {
    let total = share.len();
    for (index, socket) in share.iter_mut().enumerate() {
        if socket.write_all(message).is_err() {
            return false;
        }
        if yields_after(index, total, yield_every) {
            std::thread::yield_now();
        }
    }
    true
}

/// Time between two broadcasts.
fn publish_interval(args: &Args) -> Duration {
    Duration::from_secs_f64(1.0 / f64::from(args.publish_rate.max(1)))
}

/// A broadcast: `message_bytes` long, its first 8 bytes the send time.
fn stamped_message(message_bytes: usize) -> Vec<u8> {
    let mut message = vec![b'x'; message_bytes];
    message[..8].copy_from_slice(&now_micros().to_le_bytes());
    message
}

/// Feeds the writers through in-process channels. Returns the channels: dropping one stops its
/// writer, which closes its sockets, so they are kept until every reader is done.
fn broadcast_through_channels(
    shares: Vec<Vec<TcpStream>>,
    args: &Args,
) -> anyhow::Result<Vec<mpsc::Sender<Vec<u8>>>> {
    let mut writers = Vec::new();
    for mut share in shares {
        let (broadcasts, received) = mpsc::channel::<Vec<u8>>();
        writers.push(broadcasts);
        let yield_every = args.yield_every;
        let writer = std::thread::Builder::new().name("floor-writer".into());
        writer.spawn(move || {
            for message in received {
                if !write_to_all(&mut share, &message, yield_every) {
                    return;
                }
            }
        })?;
    }
    let interval = publish_interval(args);
    for _ in 0..args.messages {
        std::thread::sleep(interval);
        let message = stamped_message(args.message_bytes);
        for writer in &writers {
            writer.send(message.clone()).context("writer stopped")?;
        }
    }
    Ok(writers)
}

/// Feeds the writers through NATS: each writer thread has its own connection and subscription
/// (a node's), and writes a broadcast's payload to its sockets as it arrives.
fn broadcast_through_nats(
    shares: Vec<Vec<TcpStream>>,
    args: &Args,
    url: &str,
) -> anyhow::Result<()> {
    // Subjects of this process's own, so runs sharing a NATS server do not hear each other.
    let subject = format!("floor.{}", std::process::id());
    // With `--relay`, the inbound subject: the publisher sends there and one writer relays.
    let relay = args
        .relay
        .then(|| format!("floor.{}.in", std::process::id()));
    let publish_subject = relay.clone().unwrap_or_else(|| subject.clone());
    let (subscribed, subscriptions) = mpsc::channel::<anyhow::Result<()>>();
    let writers = shares.len();
    for mut share in shares {
        let (url, subject, subscribed) = (url.to_owned(), subject.clone(), subscribed.clone());
        let (relay, yield_every) = (relay.clone(), args.yield_every);
        let writer = std::thread::Builder::new().name("floor-writer".into());
        writer.spawn(move || {
            // One thread, one runtime: the broadcast is written by the thread that read it.
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => return drop(subscribed.send(Err(error.into()))),
            };
            runtime.block_on(async move {
                let subscription = async {
                    let client = loopback_nats::connect_on_loopback(&url).await?;
                    let subscription = client.subscribe(subject.clone()).await?;
                    if let Some(inbound_subject) = relay {
                        let inbound = client
                            .queue_subscribe(inbound_subject, "floor-relay".into())
                            .await?;
                        tokio::spawn(relay_to_fan_out(client.clone(), inbound, subject));
                    }
                    // The server knows the subscriptions once this round trip is back.
                    client.flush().await?;
                    anyhow::Ok((client, subscription))
                };
                let (_client, mut subscription) = match subscription.await {
                    Ok(subscribed_writer) => subscribed_writer,
                    Err(error) => return drop(subscribed.send(Err(error))),
                };
                let _ = subscribed.send(Ok(()));
                while let Some(message) = subscription.next().await {
                    if !write_to_all(&mut share, &message.payload, yield_every) {
                        return;
                    }
                }
            });
        })?;
    }
    // Only the writers hold senders now, so a writer that dies before subscribing ends the wait.
    drop(subscribed);
    for _ in 0..writers {
        subscriptions.recv().context("a writer stopped")??;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = loopback_nats::connect_on_loopback(url)
            .await
            .context("connect to NATS")?;
        let mut ticker = tokio::time::interval(publish_interval(args));
        ticker.tick().await;
        for _ in 0..args.messages {
            ticker.tick().await;
            let message = stamped_message(args.message_bytes);
            client
                .publish(publish_subject.clone(), message.into())
                .await?;
        }
        client.flush().await?;
        anyhow::Ok(())
    })
}

/// A reader at work: a thread of this process, or a process of its own reporting its latencies
/// through a socket as little-endian `u64`s.
enum Reader {
    Thread(std::thread::JoinHandle<anyhow::Result<Vec<u64>>>),
    Process(ChildReader),
}

/// A forked reader; killed and reaped if dropped before [`Reader::finish`] reaped it (this
/// process failed), so that no reader outlives the run.
struct ChildReader {
    pid: libc::pid_t,
    report: UnixStream,
    reaped: bool,
}

impl Drop for ChildReader {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: signals and reaps a child this process forked and has not reaped yet.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

impl Reader {
    /// Waits for the reader to have seen every message; returns their latencies (µs).
    fn finish(self) -> anyhow::Result<Vec<u64>> {
        match self {
            Reader::Thread(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("reader panicked"))?,
            Reader::Process(mut child) => {
                let mut bytes = Vec::new();
                child.report.read_to_end(&mut bytes)?;
                let (pid, mut status) = (child.pid, 0);
                // SAFETY: waits for a child this process forked and has not reaped yet.
                let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
                child.reaped = waited == pid;
                ensure!(
                    waited == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                    "reader process {pid} failed"
                );
                Ok(bytes
                    .chunks_exact(8)
                    .map(|stamp| u64::from_le_bytes(stamp.try_into().expect("chunks of 8")))
                    .collect())
            }
        }
    }
}

/// Starts a reader of `share`: a thread, or with `--reader-processes` a forked process, which
/// closes `others` (every other socket of the run) so that it holds only its own.
fn start_reader(share: Vec<TcpStream>, others: &[RawFd], args: &Args) -> anyhow::Result<Reader> {
    let (message_bytes, expected) = (args.message_bytes, share.len() * args.messages);
    if !args.reader_processes {
        let reader = std::thread::Builder::new().name("floor-reader".into());
        let thread = reader.spawn(move || read_all(share, message_bytes, expected))?;
        return Ok(Reader::Thread(thread));
    }
    let (mut child_end, report) = UnixStream::pair()?;
    // SAFETY: this process has no other thread yet (readers start first), so the child is a
    // whole copy of it and may run anything.
    let pid = unsafe { libc::fork() };
    ensure!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        drop(report);
        for &descriptor in others {
            // SAFETY: the streams owning these descriptors are never used or dropped in the
            // child, which ends with `_exit`, so nothing closes them twice. Without this the
            // reader would hold the writers' ends open, and a failed writer would look like
            // silence (10 s) instead of a closed socket.
            unsafe { libc::close(descriptor) };
        }
        let code = match read_all(share, message_bytes, expected) {
            Ok(latencies) => {
                let bytes: Vec<u8> = latencies.iter().flat_map(|l| l.to_le_bytes()).collect();
                i32::from(child_end.write_all(&bytes).is_err())
            }
            Err(error) => {
                eprintln!("reader: {error:#}");
                1
            }
        };
        // SAFETY: ends the child at once, without the exit handlers it shares with the parent.
        unsafe { libc::_exit(code) };
    }
    Ok(Reader::Process(ChildReader {
        pid,
        report,
        reaped: false,
    }))
}

/// The relaying writer's part of `--relay`: republishes what it takes from the inbound queue
/// group on the fan-out subject, as the node that takes a `realtime.room.<id>` message does.
async fn relay_to_fan_out(
    client: async_nats::Client,
    mut inbound: async_nats::Subscriber,
    fan_out_subject: String,
) {
    while let Some(message) = inbound.next().await {
        if client
            .publish(fan_out_subject.clone(), message.payload)
            .await
            .is_err()
        {
            return;
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.members > 0 && args.writers > 0 && args.readers > 0 && args.message_bytes >= 8,
        "members, writers and readers must be positive and messages at least 8 bytes"
    );
    if let Some(url) = &args.nats {
        ensure!(
            loopback_nats::is_loopback_nats_url(url),
            "refusing a non-loopback NATS server: {url}"
        );
    }
    let (mut client_sides, server_sides) = socket_pairs(args.members)?;

    // Readers start before any other thread of this process, so that they may be forked.
    let mut readers = Vec::new();
    let per_reader = args.members.div_ceil(args.readers);
    while !client_sides.is_empty() {
        let share: Vec<TcpStream> = client_sides
            .drain(..per_reader.min(client_sides.len()))
            .collect();
        let others: Vec<RawFd> = client_sides
            .iter()
            .chain(&server_sides)
            .map(AsRawFd::as_raw_fd)
            .collect();
        readers.push(start_reader(share, &others, &args)?);
    }

    let shares = deal_to_writers(server_sides, args.writers);
    let _channels_kept_open = match &args.nats {
        Some(url) => {
            broadcast_through_nats(shares, &args, url)?;
            Vec::new()
        }
        None => broadcast_through_channels(shares, &args)?,
    };

    let mut latencies = Vec::new();
    for reader in readers {
        latencies.extend(reader.finish()?);
    }
    latencies.sort_unstable();
    println!(
        "{}",
        json!({
            "members": args.members, "writers": args.writers, "readers": args.readers,
            "messages": args.messages, "delivered": latencies.len(),
            "reader_processes": args.reader_processes,
            "via": match (&args.nats, args.relay) {
                (Some(_), true) => "nats-relay",
                (Some(_), false) => "nats",
                (None, _) => "channel",
            },
            "delivery": {
                "p1_ms": quantile_ms(&latencies, 0.01), "p10_ms": quantile_ms(&latencies, 0.10),
                "p50_ms": quantile_ms(&latencies, 0.50), "p90_ms": quantile_ms(&latencies, 0.90),
                "p99_ms": quantile_ms(&latencies, 0.99), "max_ms": quantile_ms(&latencies, 1.0),
            },
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_writer_gets_every_writers_th_socket() {
        let (client_sides, server_sides) = socket_pairs(7).unwrap();
        let ports: Vec<u16> = server_sides
            .iter()
            .map(|socket| socket.peer_addr().unwrap().port())
            .collect();
        let shares = deal_to_writers(server_sides, 3);
        let dealt: Vec<Vec<u16>> = shares
            .iter()
            .map(|share| {
                share
                    .iter()
                    .map(|socket| socket.peer_addr().unwrap().port())
                    .collect()
            })
            .collect();
        assert_eq!(
            dealt,
            vec![
                vec![ports[0], ports[3], ports[6]],
                vec![ports[1], ports[4]],
                vec![ports[2], ports[5]],
            ]
        );
        // More writers than sockets: no empty writer.
        let (_, few) = socket_pairs(2).unwrap();
        assert_eq!(deal_to_writers(few, 4).len(), 2);
        drop(client_sides);
    }

    #[test]
    fn stamps_split_across_reads_are_read_whole() {
        let stamps = [11u64, 1 << 40, u64::MAX - 3];
        let stream: Vec<u8> = stamps
            .iter()
            .flat_map(|stamp| {
                let mut message = vec![b'x'; 20];
                message[..8].copy_from_slice(&stamp.to_le_bytes());
                message
            })
            .collect();
        for read_size in [1, 3, 7, 8, 13, 20, 60] {
            let mut cursor = MessageCursor::default();
            let mut seen = Vec::new();
            for read in stream.chunks(read_size) {
                cursor.take(read, 20, |stamp| seen.push(stamp));
            }
            assert_eq!(seen, stamps, "reads of {read_size} bytes");
        }
    }

    #[test]
    fn a_broadcast_reaches_every_socket_with_its_send_time() {
        // Stamped a second in the past, so that the measured latency is known to within the
        // test's own duration.
        const AGE_MICROS: u64 = 1_000_000;
        let started = now_micros();
        let (client_sides, server_sides) = socket_pairs(4).unwrap();
        let readers = std::thread::spawn(move || read_all(client_sides, 64, 4 * 2));
        let mut shares = deal_to_writers(server_sides, 2);
        for _ in 0..2 {
            let mut message = vec![b'x'; 64];
            message[..8].copy_from_slice(&(now_micros() - AGE_MICROS).to_le_bytes());
            for share in &mut shares {
                assert!(write_to_all(share, &message, 1));
            }
        }
        let latencies = readers.join().unwrap().unwrap();
        let test_micros = now_micros() - started;
        assert_eq!(latencies.len(), 8);
        for latency in latencies {
            assert!(
                (AGE_MICROS..=AGE_MICROS + test_micros).contains(&latency),
                "latency {latency} µs"
            );
        }
    }
}
