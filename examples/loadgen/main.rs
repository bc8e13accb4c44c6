//! Load generator: many authenticated WebSocket connections against realtime nodes on loopback,
//! spread over worker processes (a process holds at most ~20,000 files) and source addresses
//! 127.0.0.2, 127.0.0.3, ... (one address has ~28k ephemeral ports). It joins rooms, publishes
//! broadcasts through NATS or the HTTP API with a send timestamp, and reports one JSON line:
//! connections held, failed and dropped, handshake and delivery latency percentiles, expected vs
//! delivered messages, server RSS before and after connecting (bytes per connection) and server
//! CPU seconds.
//!
//! ```sh
//! cargo run --release -p realtime-examples --bin loadgen -- \
//!   --nodes 127.0.0.1:8080 --connections 10000 --rooms 20 --messages 200 --server-pid $(pgrep -n realtime)
//! ```
//! It stops by itself (`--max-seconds`) and refuses targets outside 127.0.0.0/8.
//!
//! - `main.rs`: arguments, the coordinator (starts workers, publishes, adds up the reports) and
//!   the worker's connect phase (tokio).
//! - `wire`: the tool's own WebSocket framing (upgrade request, server frames, masked frames).
//! - `reader`: the epoll threads that hold the connections and time the pushes.

#[path = "../loopback_nats.rs"]
mod loopback_nats;
mod reader;
mod wire;

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use jsonwebtoken::{EncodingKey, Header};
use realtime_core::descriptors;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use reader::{Held, Readers};
use wire::{OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG, OPCODE_TEXT, client_frame, frame_at};

#[derive(Parser, Clone)]
// A flag given twice takes its last value, so `examples/bench.sh SCENARIO --flag value` overrides.
#[command(args_override_self = true)]
struct Args {
    /// Node addresses (host:port, loopback only); connections are spread round-robin.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8080")]
    nodes: Vec<SocketAddr>,
    /// Connections in total.
    #[arg(long, default_value_t = 1000)]
    connections: u32,
    /// Worker processes (each holds connections/workers sockets; keep under ~19,000 each).
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// New connections per second, in total.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Rooms (`<room-type>:load-<n>`); connection i joins room i % rooms.
    #[arg(long, default_value_t = 20)]
    rooms: u32,
    /// Room type of the rooms (configured on the server).
    #[arg(long, default_value = "chat")]
    room_type: String,
    /// Broadcasts to publish in total (spread over the rooms).
    #[arg(long, default_value_t = 200)]
    messages: u32,
    /// Broadcasts per second.
    #[arg(long, default_value_t = 100)]
    publish_rate: u32,
    /// Payload bytes per broadcast (padding inside the data).
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Publish through NATS at this URL instead of the HTTP API.
    #[arg(long)]
    nats: Option<String>,
    /// NATS subject prefix of the deployment.
    #[arg(long, default_value = "realtime")]
    subject_prefix: String,
    /// API key for HTTP publishing.
    #[arg(long, env = "REALTIME_API__KEY", default_value = "")]
    api_key: String,
    /// HS256 secret the nodes verify tokens with.
    #[arg(
        long,
        env = "REALTIME_AUTH__JWT_SECRET",
        default_value = "dev-only-secret-change-me-0123456789abcdef"
    )]
    jwt_secret: String,
    /// Server process ids to read RSS and CPU time from (/proc).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Source addresses start at 127.0.0.<first_source> (one per 20,000 connections).
    #[arg(long, default_value_t = 2)]
    first_source: u8,
    /// How long to wait for the last deliveries after publishing.
    #[arg(long, default_value_t = 5)]
    drain_seconds: u64,
    /// Hard stop for the whole run.
    #[arg(long, default_value_t = 300)]
    max_seconds: u64,
    /// Reading threads per worker process (plain epoll loops that hold the connections).
    #[arg(long, default_value_t = 1)]
    readers: usize,
    /// Exit with status 1 when any handshake failed, any connection dropped or any message was
    /// lost.
    #[arg(long)]
    assert_clean: bool,
    /// Internal: run as worker number N (the coordinator starts these).
    #[arg(long, hide = true)]
    worker: Option<u32>,
}

/// Latency histogram: 10 µs buckets up to 10 ms, 1 ms buckets up to 10 s.
#[derive(Clone)]
struct Histogram {
    buckets: Vec<u64>,
    max_us: u64,
}

const FINE_BUCKETS: u64 = 1000;
const COARSE_BUCKETS: u64 = 10_000;

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: vec![0; (FINE_BUCKETS + COARSE_BUCKETS) as usize],
            max_us: 0,
        }
    }

    fn record(&mut self, micros: u64) {
        let index = if micros < 10_000 {
            micros / 10
        } else {
            FINE_BUCKETS + (micros / 1000).min(COARSE_BUCKETS - 1)
        };
        self.buckets[index as usize] += 1;
        self.max_us = self.max_us.max(micros);
    }

    fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.max_us = self.max_us.max(other.max_us);
    }

    fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The upper edge of the bucket holding the quantile, in milliseconds.
    fn quantile_ms(&self, quantile: f64) -> f64 {
        let target = ((self.count() as f64) * quantile).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= target {
                let index = index as u64;
                let upper_us = if index < FINE_BUCKETS {
                    (index + 1) * 10
                } else {
                    (index - FINE_BUCKETS + 1) * 1000
                };
                return upper_us.min(self.max_us) as f64 / 1000.0;
            }
        }
        0.0
    }

    fn summary(&self) -> Value {
        json!({
            "count": self.count(),
            "p1_ms": self.quantile_ms(0.01),
            "p10_ms": self.quantile_ms(0.10),
            "p50_ms": self.quantile_ms(0.50),
            "p90_ms": self.quantile_ms(0.90),
            "p99_ms": self.quantile_ms(0.99),
            "max_ms": self.max_us as f64 / 1000.0,
        })
    }

    /// Sparse form for the worker -> coordinator line.
    fn to_json(&self) -> Value {
        let sparse: Vec<[u64; 2]> = self
            .buckets
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .map(|(index, count)| [index as u64, *count])
            .collect();
        json!({ "buckets": sparse, "max_us": self.max_us })
    }

    fn from_json(value: &Value) -> Histogram {
        let mut histogram = Histogram::new();
        for pair in value["buckets"].as_array().into_iter().flatten() {
            if let (Some(index), Some(count)) = (pair[0].as_u64(), pair[1].as_u64()) {
                histogram.buckets[index as usize] += count;
            }
        }
        histogram.max_us = value["max_us"].as_u64().unwrap_or(0);
        histogram
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as u64)
        .unwrap_or(0)
}

fn token(secret: &str, user: &str) -> anyhow::Result<String> {
    let claims = json!({ "sub": user, "exp": now_micros() / 1_000_000 + 3600 });
    Ok(jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Reads VmRSS (bytes) and utime+stime (seconds) of a process from /proc.
fn process_usage(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((rss_kb * 1024, ticks / ticks_per_second))
}

fn usage_of(pids: &[u32]) -> (u64, f64) {
    pids.iter()
        .filter_map(|pid| process_usage(*pid))
        .fold((0, 0.0), |(rss, cpu), (r, c)| (rss + r, cpu + c))
}

/// One worker: opens its share of connections, reports, then counts deliveries until told to
/// finish, and reports again.
async fn run_worker(args: Args, index: u32) -> anyhow::Result<()> {
    let share =
        args.connections / args.workers + u32::from(index < args.connections % args.workers);
    let first = (0..index)
        .map(|earlier| {
            args.connections / args.workers + u32::from(earlier < args.connections % args.workers)
        })
        .sum::<u32>();
    // As the server does: the descriptor table grown once here, not at 256, 512, ... open
    // sockets in the middle of the connect phase, where each growth stalls `connect` for an RCU
    // grace period.
    descriptors::reserve_for_sockets(u64::from(share));
    let per_worker_rate = (args.rate / args.workers).max(1);
    let interval = Duration::from_secs_f64(1.0 / f64::from(per_worker_rate));
    let mut readers = Readers::start(args.readers)?;
    let mut handshakes = Histogram::new();
    let (mut ready, mut failed) = (0u32, 0u32);
    let mut errors: HashMap<String, u32> = HashMap::new();
    let mut ticker = tokio::time::interval(interval);
    for offset in 0..share {
        ticker.tick().await;
        let number = first + offset;
        let node = args.nodes[number as usize % args.nodes.len()];
        // 127.0.0.2 for the first 20,000 connections, 127.0.0.3 for the next, ...
        let source = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            args.first_source.saturating_add((number / 20_000) as u8),
        ));
        let room = format!("{}:load-{}", args.room_type, number % args.rooms);
        match connect(&args, node, source, number, &room).await {
            Ok((held, handshake_us)) => {
                handshakes.record(handshake_us);
                readers.hand_over(held)?;
                ready += 1;
            }
            Err(error) => {
                failed += 1;
                *errors
                    .entry(error.to_string().chars().take(80).collect())
                    .or_default() += 1;
            }
        }
    }
    println!(
        "{}",
        json!({ "ready": ready, "failed": failed, "errors": errors, "handshake": handshakes.to_json() })
    );
    std::io::stdout().flush()?;
    // Wait for the coordinator's "finish" line (it publishes meanwhile).
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    })
    .await?;
    let tally = readers.finish()?;
    println!(
        "{}",
        json!({ "received": tally.received, "last_arrival_us": tally.last_arrival_us, "dropped": tally.dropped, "delivery": tally.delivery.to_json() })
    );
    std::io::stdout().flush()?;
    Ok(())
}

/// Sets `IP_BIND_ADDRESS_NO_PORT`: `bind` to a source address then leaves the port to `connect`,
/// which only needs the 4-tuple to be unique. Without it, `bind` wants a port free on that
/// address, and the TIME_WAIT sockets of earlier runs make the search slow and then fail.
fn defer_port_choice_to_connect(socket: &TcpSocket) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let enabled: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a pointer to a c_int of the given length.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&enabled as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    ensure!(
        result == 0,
        "IP_BIND_ADDRESS_NO_PORT: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// TCP connect from `source`, WebSocket handshake, `connected` frame, join. Returns the
/// connection, ready to be held, and the handshake time (TCP connect to `connected` frame, µs).
async fn connect(
    args: &Args,
    node: SocketAddr,
    source: IpAddr,
    number: u32,
    room: &str,
) -> anyhow::Result<(Held, u64)> {
    let path = format!(
        "/ws?token={}",
        token(&args.jwt_secret, &format!("load-{number}"))?
    );
    let started = Instant::now();
    let tcp = TcpSocket::new_v4()?;
    defer_port_choice_to_connect(&tcp)?;
    tcp.bind(SocketAddr::new(source, 0))
        .context("bind source address")?;
    let mut stream = tokio::time::timeout(Duration::from_secs(10), tcp.connect(node))
        .await
        .context("tcp connect timeout")??;
    stream.set_nodelay(true)?;
    let mut received = Vec::with_capacity(1024);
    tokio::time::timeout(
        Duration::from_secs(10),
        upgrade(&mut stream, &node.to_string(), &path, &mut received),
    )
    .await
    .context("handshake timeout")??;
    let hello = next_text(&mut stream, &mut received).await?;
    ensure!(hello["type"] == "connected", "first frame was {hello}");
    let handshake_us = started.elapsed().as_micros() as u64;
    let heartbeat_interval = hello["heartbeat_interval_ms"]
        .as_u64()
        .filter(|millis| *millis > 0)
        .map(Duration::from_millis)
        .context("`connected` frame without heartbeat_interval_ms")?;
    let join = json!({"id": 1, "op": "join", "room": room}).to_string();
    stream
        .write_all(&client_frame(OPCODE_TEXT, join.as_bytes()))
        .await?;
    loop {
        let frame = next_text(&mut stream, &mut received).await?;
        if frame["id"] == 1 {
            ensure!(frame["ok"] == true, "join failed: {frame}");
            break;
        }
    }
    let held = Held {
        // Leaves tokio's reactor, still non-blocking, for a reader's epoll.
        stream: stream.into_std()?,
        pending: received,
        heartbeat_interval,
    };
    Ok((held, handshake_us))
}

/// Sends the upgrade request and reads the `101` answer; frames read past it stay in `received`.
async fn upgrade(
    stream: &mut TcpStream,
    host: &str,
    path: &str,
    received: &mut Vec<u8>,
) -> anyhow::Result<()> {
    stream
        .write_all(wire::upgrade_request(host, path).as_bytes())
        .await?;
    loop {
        if let Some(length) = wire::upgrade_response_length(received)? {
            received.drain(..length);
            return Ok(());
        }
        read_more(stream, received).await?;
    }
}

async fn read_more(stream: &mut TcpStream, received: &mut Vec<u8>) -> anyhow::Result<()> {
    received.reserve(1024);
    let read = stream.read_buf(received).await?;
    ensure!(read > 0, "closed");
    Ok(())
}

/// The next text frame as JSON (pings answered on the way); what follows it stays in `received`.
async fn next_text(stream: &mut TcpStream, received: &mut Vec<u8>) -> anyhow::Result<Value> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            while let Some(frame) = frame_at(received)? {
                let payload = received[frame.payload.clone()].to_vec();
                received.drain(..frame.length);
                match frame.opcode {
                    OPCODE_TEXT => return Ok(serde_json::from_slice(&payload)?),
                    OPCODE_PING => {
                        stream
                            .write_all(&client_frame(OPCODE_PONG, &payload))
                            .await?
                    }
                    OPCODE_CLOSE => bail!("closed by the server"),
                    _ => {}
                }
            }
            read_more(stream, received).await?;
        }
    })
    .await
    .context("no frame")?
}

fn is_loopback_only(args: &Args) -> bool {
    let nats_loopback = args
        .nats
        .as_deref()
        .is_none_or(loopback_nats::is_loopback_nats_url);
    nats_loopback && args.nodes.iter().all(|node| node.ip().is_loopback())
}

/// Publishes the broadcasts, spread over the rooms, at `publish_rate`.
async fn publish_all(args: &Args) -> anyhow::Result<u32> {
    let nats = match &args.nats {
        Some(url) => Some(
            loopback_nats::connect_on_loopback(url)
                .await
                .context("connect to NATS")?,
        ),
        None => None,
    };
    let http = reqwest::Client::new();
    let padding = "x".repeat(args.payload_bytes.saturating_sub(60));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(
        1.0 / f64::from(args.publish_rate.max(1)),
    ));
    let mut published = 0;
    for number in 0..args.messages {
        ticker.tick().await;
        let room = format!("{}:load-{}", args.room_type, number % args.rooms);
        let data = json!({ "sent_us": now_micros(), "n": number, "pad": padding });
        let outcome = match &nats {
            Some(client) => {
                let body = json!({ "event": "load.tick", "data": data }).to_string();
                client
                    .publish(format!("{}.room.{room}", args.subject_prefix), body.into())
                    .await
                    .map_err(anyhow::Error::from)
            }
            None => {
                let node = args.nodes[number as usize % args.nodes.len()];
                http.post(format!("http://{node}/api/publish"))
                    .header("x-api-key", &args.api_key)
                    .json(&json!({ "room": room, "event": "load.tick", "data": data }))
                    .send()
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|response| {
                        if response.status().is_success() {
                            Ok(())
                        } else {
                            bail!("publish answered {}", response.status())
                        }
                    })
            }
        };
        match outcome {
            Ok(()) => published += 1,
            Err(error) => eprintln!("publish {number} failed: {error:#}"),
        }
    }
    if let Some(client) = nats {
        client.flush().await?;
    }
    Ok(published)
}

/// Adds a worker's `{"error": count}` map to the totals: the same error from several workers
/// adds up.
fn add_errors(totals: &mut HashMap<String, u64>, worker_errors: &Value) {
    for (error, count) in worker_errors.as_object().into_iter().flatten() {
        *totals.entry(error.clone()).or_default() += count.as_u64().unwrap_or(0);
    }
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

fn read_line(reader: &mut impl BufRead) -> anyhow::Result<Value> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    serde_json::from_str(&line).with_context(|| format!("worker said {line:?}"))
}

async fn run_coordinator(args: Args) -> anyhow::Result<bool> {
    ensure!(
        is_loopback_only(&args),
        "refusing non-loopback targets: this tool only loads 127.0.0.0/8"
    );
    ensure!(
        args.connections / args.workers.max(1) <= 19_000,
        "more than 19,000 connections per worker: add --workers"
    );
    let (rss_before, cpu_before) = usage_of(&args.server_pid);
    let executable = std::env::current_exe()?;
    let forwarded: Vec<String> = std::env::args().skip(1).collect();
    let mut workers = Vec::new();
    for index in 0..args.workers {
        let child = Command::new(&executable)
            .args(&forwarded)
            .args(["--worker", &index.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        workers.push(child);
    }
    let mut readers: Vec<_> = workers
        .iter_mut()
        .map(|child| std::io::BufReader::new(child.stdout.take().expect("piped")))
        .collect();
    let connect_started = Instant::now();
    let mut handshakes = Histogram::new();
    let (mut ready, mut failed) = (0u64, 0u64);
    let mut errors: HashMap<String, u64> = HashMap::new();
    for reader in &mut readers {
        let report = tokio::task::block_in_place(|| read_line(reader))?;
        ready += report["ready"].as_u64().unwrap_or(0);
        failed += report["failed"].as_u64().unwrap_or(0);
        handshakes.merge(&Histogram::from_json(&report["handshake"]));
        add_errors(&mut errors, &report["errors"]);
    }
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    // Let the server settle (allocator, lazy structures) before reading its memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_after, cpu_connected) = usage_of(&args.server_pid);

    let publish_started = Instant::now();
    let publish_started_us = now_micros();
    let published = publish_all(&args).await?;
    let publish_seconds = publish_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.drain_seconds)).await;
    let (_, cpu_after) = usage_of(&args.server_pid);
    for worker in &mut workers {
        writeln!(worker.stdin.as_mut().expect("piped"), "finish")?;
    }
    let mut delivery = Histogram::new();
    let (mut delivered, mut dropped) = (0u64, 0u64);
    let mut last_arrival_us = publish_started_us;
    for reader in &mut readers {
        let report = tokio::task::block_in_place(|| read_line(reader))?;
        delivered += report["received"].as_u64().unwrap_or(0);
        dropped += report["dropped"].as_u64().unwrap_or(0);
        last_arrival_us = last_arrival_us.max(report["last_arrival_us"].as_u64().unwrap_or(0));
        delivery.merge(&Histogram::from_json(&report["delivery"]));
    }
    for worker in &mut workers {
        let _ = worker.wait();
    }
    // Each broadcast goes to every connection in its room.
    let members_per_room: Vec<u64> = (0..args.rooms)
        .map(|room| {
            (0..args.connections)
                .filter(|number| number % args.rooms == room)
                .count() as u64
        })
        .collect();
    let expected: u64 = (0..published)
        .map(|number| members_per_room[(number % args.rooms) as usize])
        .sum();
    let expected = if failed == 0 {
        expected
    } else {
        expected.saturating_sub(failed.min(expected))
    };
    // From the first publish to the last delivery seen by any client.
    let delivering_seconds =
        (last_arrival_us.saturating_sub(publish_started_us) as f64 / 1e6).max(1e-6);
    let deliveries_per_second = (delivered as f64 / delivering_seconds).round();
    let bytes_per_connection = if ready > 0 && rss_after > rss_before {
        (rss_after - rss_before) / ready
    } else {
        0
    };
    // The servers' own cost per delivery, apart from the load generator sharing the cores.
    let deliveries_per_cpu_second = if cpu_after > cpu_connected {
        (delivered as f64 / (cpu_after - cpu_connected)).round()
    } else {
        0.0
    };
    let report = json!({
        "connections": { "requested": args.connections, "held": ready, "failed": failed, "dropped": dropped, "errors": errors, "seconds": round2(connect_seconds) },
        "handshake": handshakes.summary(),
        "messages": { "published": published, "expected": expected, "delivered": delivered, "lost": expected.saturating_sub(delivered), "publish_seconds": round2(publish_seconds), "deliveries_per_second": deliveries_per_second, "via": if args.nats.is_some() { "nats" } else { "http" } },
        "delivery": delivery.summary(),
        "server": { "rss_before": rss_before, "rss_after": rss_after, "bytes_per_connection": bytes_per_connection, "cpu_seconds": round2(cpu_after - cpu_before), "cpu_seconds_connecting": round2(cpu_connected - cpu_before), "cpu_seconds_delivering": round2(cpu_after - cpu_connected), "deliveries_per_cpu_second": deliveries_per_cpu_second },
    });
    println!("{report}");
    Ok(failed == 0 && dropped == 0 && delivered == expected)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let limit = Duration::from_secs(args.max_seconds);
    match args.worker {
        Some(index) => runtime.block_on(async {
            tokio::time::timeout(limit, run_worker(args.clone(), index))
                .await
                .context("worker ran out of time")?
        }),
        None => {
            let assert_clean = args.assert_clean;
            let clean = runtime.block_on(async {
                tokio::time::timeout(limit, run_coordinator(args))
                    .await
                    .context("run ran out of time")?
            })?;
            if assert_clean && !clean {
                eprintln!("loadgen: failed handshakes, dropped connections or lost messages");
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_of_several_workers_add_up() {
        let mut totals = HashMap::new();
        add_errors(
            &mut totals,
            &json!({ "connection refused": 50, "timeout": 1 }),
        );
        add_errors(&mut totals, &json!({ "connection refused": 50 }));
        assert_eq!(totals["connection refused"], 100);
        assert_eq!(totals["timeout"], 1);
    }
}
