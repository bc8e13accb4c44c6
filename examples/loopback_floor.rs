//! Loopback floor: the cheapest fan-out this machine can do, as a yardstick for the server's
//! delivery latency. No WebSocket, no broker, no async runtime: `--writers` threads (standing in
//! for the nodes) each own a share of the server-side sockets and write every broadcast to them
//! with one blocking `write` each; `--readers` threads (standing in for the load generator's
//! workers) read the client sides through epoll. Each broadcast is a fixed-size message whose
//! first 8 bytes are its send time; the report is one JSON line of delivery latency percentiles.
//!
//! ```sh
//! cargo run --release -p realtime-examples --bin loopback-floor -- --members 1000
//! ```
//! It only uses 127.0.0.1 and stops after `--messages` broadcasts.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use clap::Parser;
use serde_json::json;

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
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as u64)
        .unwrap_or(0)
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
    // Bytes of a message split across reads, per socket.
    let mut partial = vec![0usize; sockets.len()];
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
                        let mut offset = (message_bytes - partial[index]) % message_bytes;
                        while offset + 8 <= read {
                            let sent = u64::from_le_bytes(buffer[offset..offset + 8].try_into()?);
                            latencies.push(arrived.saturating_sub(sent));
                            offset += message_bytes;
                        }
                        partial[index] = (partial[index] + read) % message_bytes;
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.members > 0 && args.writers > 0 && args.readers > 0 && args.message_bytes >= 8,
        "members, writers and readers must be positive and messages at least 8 bytes"
    );
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let (mut client_sides, mut server_sides) = (Vec::new(), Vec::new());
    for _ in 0..args.members {
        let client = TcpStream::connect(address)?;
        let (server, _) = listener.accept()?;
        // As the realtime server and the load tool do.
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        client_sides.push(client);
        server_sides.push(server);
    }

    let mut readers = Vec::new();
    let per_reader = args.members.div_ceil(args.readers);
    while !client_sides.is_empty() {
        let share: Vec<TcpStream> = client_sides
            .drain(..per_reader.min(client_sides.len()))
            .collect();
        let (message_bytes, expected) = (args.message_bytes, share.len() * args.messages);
        let reader = std::thread::Builder::new().name("floor-reader".into());
        readers.push(reader.spawn(move || read_all(share, message_bytes, expected))?);
    }

    let mut writers = Vec::new();
    let per_writer = args.members.div_ceil(args.writers);
    while !server_sides.is_empty() {
        let mut share: Vec<TcpStream> = server_sides
            .drain(..per_writer.min(server_sides.len()))
            .collect();
        let (broadcasts, receive_broadcasts) = mpsc::channel::<Vec<u8>>();
        writers.push(broadcasts);
        let writer = std::thread::Builder::new().name("floor-writer".into());
        writer.spawn(move || {
            for message in receive_broadcasts {
                for socket in &mut share {
                    if socket.write_all(&message).is_err() {
                        return;
                    }
                }
            }
        })?;
    }

    let interval = Duration::from_secs_f64(1.0 / f64::from(args.publish_rate.max(1)));
    for _ in 0..args.messages {
        std::thread::sleep(interval);
        let mut message = vec![b'x'; args.message_bytes];
        message[..8].copy_from_slice(&now_micros().to_le_bytes());
        for writer in &writers {
            writer.send(message.clone()).context("writer stopped")?;
        }
    }

    let mut latencies = Vec::new();
    for reader in readers {
        let share = reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))??;
        latencies.extend(share);
    }
    latencies.sort_unstable();
    println!(
        "{}",
        json!({
            "members": args.members, "writers": args.writers, "readers": args.readers,
            "messages": args.messages, "delivered": latencies.len(),
            "delivery": {
                "p50_ms": quantile_ms(&latencies, 0.50), "p90_ms": quantile_ms(&latencies, 0.90),
                "p99_ms": quantile_ms(&latencies, 0.99), "max_ms": quantile_ms(&latencies, 1.0),
            },
        })
    );
    Ok(())
}
