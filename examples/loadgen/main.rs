//! Load generator: many authenticated WebSocket connections against realtime nodes on loopback,
//! spread over worker processes (a process holds at most ~20,000 files) and source addresses
//! 127.0.0.2, 127.0.0.3, ... (one address has ~28k ephemeral ports). It joins rooms, publishes
//! broadcasts through NATS or the HTTP API with a send timestamp, and reports one JSON line:
//! connections held, failed and dropped, handshake and delivery latency percentiles, expected vs
//! delivered messages, server RSS before and after connecting (bytes per connection) and server
//! CPU seconds. With `--leave-rate N` the connections then close at N per second (the leave
//! phase); the presence pushes heard (joins and leaves announced to the room) are reported per
//! phase, to measure a join storm and a mass leave.
//!
//! ```sh
//! cargo run --release -p realtime-examples --bin loadgen -- \
//!   --nodes 127.0.0.1:8080 --connections 10000 --rooms 20 --messages 200 --server-pid $(pgrep -n realtime)
//! ```
//! It stops by itself (`--max-seconds`) and refuses targets outside 127.0.0.0/8.
//!
//! - `main.rs`: arguments, the coordinator (starts workers, publishes, starts the leave phase,
//!   adds up the reports) and the worker's connect phase (tokio).
//! - `wire`: the tool's own WebSocket framing (upgrade request, server frames, masked frames).
//! - `reader`: the epoll threads that hold the connections, time the pushes, count the presence
//!   pushes and close the connections in the leave phase.
//!
//! The coordinator and its workers talk in lines: a worker prints its connect report, then waits
//! on stdin for `leave` (it closes its connections, then prints `{"left":true}`) and `finish`
//! (it prints what its readers saw).

#[path = "../loopback_nats.rs"]
mod loopback_nats;
mod reader;
mod wire;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use jsonwebtoken::{EncodingKey, Header};
use realtime_core::descriptors;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use reader::{Held, Phase, PresenceTally, Readers};
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
    /// How long to wait for the last deliveries after publishing (and after the last close of
    /// the leave phase).
    #[arg(long, default_value_t = 5)]
    drain_seconds: u64,
    /// Closes per second, in total over the workers, of a leave phase after the deliveries:
    /// every held connection closes (a Close frame, code 1000) in the order it joined, while the
    /// others keep reading and count the leaves announced to them. 0: no leave phase.
    #[arg(long, default_value_t = 0)]
    leave_rate: u32,
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
    // Where the join phase's settle time starts (the coordinator takes the earliest worker's).
    let first_attempt_us = now_micros();
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
        json!({ "ready": ready, "failed": failed, "errors": errors, "handshake": handshakes.to_json(), "first_attempt_us": first_attempt_us })
    );
    std::io::stdout().flush()?;
    // The coordinator publishes meanwhile, then says "leave" (with --leave-rate), then "finish".
    if next_command().await? == "leave" {
        leave_phase(&args, &readers).await?;
        next_command().await?;
    }
    let tally = readers.finish()?;
    let presence = json!({
        "join": tally.presence_join.to_json(),
        "leave": tally.presence_leave.to_json(),
    });
    println!(
        "{}",
        json!({ "received": tally.received, "last_arrival_us": tally.last_arrival_us, "dropped": tally.dropped, "delivery": tally.delivery.to_json(), "closed": tally.closed, "presence": presence })
    );
    std::io::stdout().flush()?;
    Ok(())
}

/// The coordinator's next line on the worker's stdin (`leave` or `finish`), trimmed; empty when
/// the coordinator has gone (then the worker finishes).
async fn next_command() -> anyhow::Result<String> {
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        line
    })
    .await?;
    Ok(line.trim().to_string())
}

/// The worker's leave phase: its readers close its connections at its share of --leave-rate
/// (the workers hold even shares); `{"left":true}` tells the coordinator they are all closed.
async fn leave_phase(args: &Args, readers: &Readers) -> anyhow::Result<()> {
    let closes_per_second = f64::from(args.leave_rate) / f64::from(args.workers.max(1));
    let all_closed = readers.start_leaving(closes_per_second)?;
    tokio::task::spawn_blocking(move || all_closed.wait()).await?;
    println!("{}", json!({ "left": true }));
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
    let mut presence_heard = PresenceTally::default();
    loop {
        let frame = next_text(&mut stream, &mut received).await?;
        if frame["id"] == 1 {
            ensure!(frame["ok"] == true, "join failed: {frame}");
            break;
        }
        // Announcements can come before the join reply (the server announces a join before it
        // answers): counted like the reader counts them, from the frame's text. Few frames take
        // this path, so writing the parsed frame back out costs nothing that matters.
        if let Some(news) = reader::presence_news(&frame.to_string()) {
            presence_heard.record(news, now_micros());
        }
    }
    let held = Held {
        // Leaves tokio's reactor, still non-blocking, for a reader's epoll.
        stream: stream.into_std()?,
        // Pushes already read past the reply: the reader counts them (presence ones included).
        pending: received,
        heartbeat_interval,
        presence_heard,
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

/// The distinct nodes of `--nodes`, in the order first listed. A node may be listed several
/// times to give it a larger share of the connections (and so of the rooms).
fn distinct_nodes(args: &Args) -> Vec<SocketAddr> {
    let mut distinct: Vec<SocketAddr> = Vec::new();
    for node in &args.nodes {
        if !distinct.contains(node) {
            distinct.push(*node);
        }
    }
    distinct
}

/// Each distinct node's `realtime_broker_frames_in_total` (frames the broker brought it), from
/// its `/metrics`; `None` for a node that could not be read.
async fn broker_frames_in_per_node(http: &reqwest::Client, args: &Args) -> Vec<Option<u64>> {
    let mut counts = Vec::new();
    for node in distinct_nodes(args) {
        let text = match http.get(format!("http://{node}/metrics")).send().await {
            Ok(response) => response.text().await.ok(),
            Err(_) => None,
        };
        counts.push(text.as_deref().and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("realtime_broker_frames_in_total "))
                .and_then(|value| value.trim().parse::<f64>().ok())
                .map(|value| value as u64)
        }));
    }
    counts
}

/// Per distinct node: the rooms it holds members of (connection `n` goes to
/// `nodes[n % nodes.len()]` and into room `n % rooms`), the broadcasts published into those
/// rooms, and the frames its broker brought it meanwhile. With per-room interest the last two
/// match: a node hears about its own rooms, not the cluster's.
fn interest_report(
    args: &Args,
    published: u32,
    frames_in_before: &[Option<u64>],
    frames_in_after: &[Option<u64>],
) -> Value {
    let distinct = distinct_nodes(args);
    let mut rooms_of_node: Vec<std::collections::BTreeSet<u32>> =
        vec![Default::default(); distinct.len()];
    for number in 0..args.connections {
        let node = args.nodes[number as usize % args.nodes.len()];
        let index = distinct
            .iter()
            .position(|known| *known == node)
            .expect("listed");
        rooms_of_node[index].insert(number % args.rooms);
    }
    let per_node: Vec<Value> = distinct
        .iter()
        .enumerate()
        .map(|(index, node)| {
            let broadcasts_into_its_rooms = (0..published)
                .filter(|number| rooms_of_node[index].contains(&(number % args.rooms)))
                .count();
            let frames_in = match (frames_in_before.get(index), frames_in_after.get(index)) {
                (Some(Some(before)), Some(Some(after))) => json!(after.saturating_sub(*before)),
                _ => Value::Null,
            };
            json!({
                "node": node.to_string(),
                "rooms_held": rooms_of_node[index].len(),
                "broadcasts_into_its_rooms": broadcasts_into_its_rooms,
                "broker_frames_in": frames_in,
            })
        })
        .collect();
    json!({ "rooms": args.rooms, "broadcasts": published, "nodes": per_node })
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
    // Where the join phase starts should no worker say when it first tried.
    let connect_started_us = now_micros();
    let mut handshakes = Histogram::new();
    let (mut ready, mut failed) = (0u64, 0u64);
    let mut errors: HashMap<String, u64> = HashMap::new();
    let mut first_attempt_us: Option<u64> = None;
    for reader in &mut readers {
        let report = tokio::task::block_in_place(|| read_line(reader))?;
        ready += report["ready"].as_u64().unwrap_or(0);
        failed += report["failed"].as_u64().unwrap_or(0);
        handshakes.merge(&Histogram::from_json(&report["handshake"]));
        add_errors(&mut errors, &report["errors"]);
        if let Some(attempt_us) = report["first_attempt_us"].as_u64() {
            first_attempt_us =
                Some(first_attempt_us.map_or(attempt_us, |earliest| earliest.min(attempt_us)));
        }
    }
    let join_started_us = first_attempt_us.unwrap_or(connect_started_us);
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    // Let the server settle (allocator, lazy structures) before reading its memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_after, cpu_connected) = usage_of(&args.server_pid);

    let http = reqwest::Client::new();
    let frames_in_before = broker_frames_in_per_node(&http, &args).await;
    let publish_started = Instant::now();
    let publish_started_us = now_micros();
    let published = publish_all(&args).await?;
    let publish_seconds = publish_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.drain_seconds)).await;
    let (_, cpu_after) = usage_of(&args.server_pid);
    let frames_in_after = broker_frames_in_per_node(&http, &args).await;
    let leave_run = if args.leave_rate > 0 {
        Some(run_leave_phase(&args, &mut workers, &mut readers).await?)
    } else {
        None
    };
    tell_workers(&mut workers, "finish")?;
    let mut delivery = Histogram::new();
    let (mut delivered, mut dropped, mut closed) = (0u64, 0u64, 0u64);
    let mut last_arrival_us = publish_started_us;
    let (mut presence_join, mut presence_leave) =
        (PresenceTally::default(), PresenceTally::default());
    for reader in &mut readers {
        let report = tokio::task::block_in_place(|| read_line(reader))?;
        delivered += report["received"].as_u64().unwrap_or(0);
        dropped += report["dropped"].as_u64().unwrap_or(0);
        closed += report["closed"].as_u64().unwrap_or(0);
        last_arrival_us = last_arrival_us.max(report["last_arrival_us"].as_u64().unwrap_or(0));
        delivery.merge(&Histogram::from_json(&report["delivery"]));
        presence_join.merge(&PresenceTally::from_json(&report["presence"]["join"]));
        presence_leave.merge(&PresenceTally::from_json(&report["presence"]["leave"]));
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
    let mut report = json!({
        "connections": { "requested": args.connections, "held": ready, "failed": failed, "dropped": dropped, "errors": errors, "seconds": round2(connect_seconds) },
        "handshake": handshakes.summary(),
        "messages": { "published": published, "expected": expected, "delivered": delivered, "lost": expected.saturating_sub(delivered), "publish_seconds": round2(publish_seconds), "deliveries_per_second": deliveries_per_second, "via": if args.nats.is_some() { "nats" } else { "http" } },
        "delivery": delivery.summary(),
        "server": { "rss_before": rss_before, "rss_after": rss_after, "bytes_per_connection": bytes_per_connection, "cpu_seconds": round2(cpu_after - cpu_before), "cpu_seconds_connecting": round2(cpu_connected - cpu_before), "cpu_seconds_delivering": round2(cpu_after - cpu_connected), "deliveries_per_cpu_second": deliveries_per_cpu_second },
    });
    report["interest"] = interest_report(&args, published, &frames_in_before, &frames_in_after);
    if presence_join.frames + presence_leave.frames > 0 || leave_run.is_some() {
        let expected_pairs = expected_presence_pairs(&members_per_room);
        // The server's CPU from the start to the leave phase: connecting, the announcements,
        // holding, and the deliveries if any (join-storm publishes none).
        let join = presence_phase_report(
            Phase::Join,
            &presence_join,
            join_started_us,
            cpu_after - cpu_before,
            expected_pairs,
        );
        let leave = leave_run.map(|leave_run| {
            let mut leave = presence_phase_report(
                Phase::Leave,
                &presence_leave,
                leave_run.started_us,
                leave_run.server_cpu_seconds,
                expected_pairs,
            );
            leave["closed"] = json!(closed);
            leave
        });
        report["presence"] = json!({ "join": join, "leave": leave });
    }
    println!("{report}");
    // The leave phase's closes are not drops: only what the server ended counts against a run.
    Ok(failed == 0 && dropped == 0 && delivered == expected)
}

/// Writes one line to every worker (`leave` or `finish`).
fn tell_workers(workers: &mut [Child], command: &str) -> anyhow::Result<()> {
    for worker in workers {
        writeln!(worker.stdin.as_mut().expect("piped"), "{command}")?;
    }
    Ok(())
}

/// What the coordinator measured of the leave phase.
struct LeaveRun {
    /// When the workers were told to leave (µs since the epoch): the leave settle time starts
    /// here.
    started_us: u64,
    /// The servers' CPU from then to the end of the drain after the last close.
    server_cpu_seconds: f64,
}

/// The leave phase: tells the workers to close their connections at --leave-rate, waits until
/// every worker has closed all of its, then --drain-seconds for the servers to finish the leaves
/// and their announcements.
async fn run_leave_phase(
    args: &Args,
    workers: &mut [Child],
    reports: &mut [BufReader<ChildStdout>],
) -> anyhow::Result<LeaveRun> {
    let (_, cpu_before) = usage_of(&args.server_pid);
    let started_us = now_micros();
    tell_workers(workers, "leave")?;
    for report in reports.iter_mut() {
        let left = tokio::task::block_in_place(|| read_line(report))?;
        ensure!(left["left"] == true, "worker said {left} instead of left");
    }
    tokio::time::sleep(Duration::from_secs(args.drain_seconds)).await;
    let (_, cpu_after) = usage_of(&args.server_pid);
    Ok(LeaveRun {
        started_us,
        server_cpu_seconds: cpu_after - cpu_before,
    })
}

/// The announcements that make every member's view complete: in a room of m, the member who
/// joins k-th must hear of the m - k who join after it, m(m-1)/2 in all (more are heard: the
/// server also announces each join to the member who joined); leaving, the member who leaves
/// k-th must have heard of the k - 1 who left before it, m(m-1)/2 in all.
fn expected_presence_pairs(members_per_room: &[u64]) -> u64 {
    members_per_room
        .iter()
        .map(|&members| members * members.saturating_sub(1) / 2)
        .sum()
}

/// One phase of the `presence` report. `since_us` is where its settle time starts (the first
/// connection attempt, or the start of the leave phase); `complete` says whether the entries
/// the phase is about (joins, or leaves) reached `expected_pairs`.
fn presence_phase_report(
    phase: Phase,
    heard: &PresenceTally,
    since_us: u64,
    server_cpu_seconds: f64,
    expected_pairs: u64,
) -> Value {
    let entries_heard = match phase {
        Phase::Join => heard.joins_heard,
        Phase::Leave => heard.leaves_heard,
    };
    // No presence frame, no settle time.
    let settle_ms = (heard.last_frame_us > 0)
        .then(|| round2(heard.last_frame_us.saturating_sub(since_us) as f64 / 1000.0));
    json!({
        "frames": heard.frames,
        "joins_heard": heard.joins_heard,
        "leaves_heard": heard.leaves_heard,
        "settle_ms": settle_ms,
        "server_cpu_s": round2(server_cpu_seconds),
        "expected_pairs": expected_pairs,
        "complete": entries_heard >= expected_pairs,
    })
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

    #[test]
    fn a_storm_of_five_thousand_in_one_room_makes_twelve_and_a_half_million_pairs() {
        assert_eq!(expected_presence_pairs(&[5000]), 12_497_500);
        assert_eq!(expected_presence_pairs(&[3, 2, 1, 0]), 3 + 1);
    }

    #[test]
    fn a_phase_is_complete_once_its_own_entries_reach_the_pairs() {
        let heard = PresenceTally {
            frames: 4,
            joins_heard: 3,
            leaves_heard: 1,
            last_frame_us: 1_500_000,
        };
        let join = presence_phase_report(Phase::Join, &heard, 1_000_000, 0.5, 3);
        assert_eq!(join["complete"], true);
        assert_eq!(join["settle_ms"], 500.0);
        let leave = presence_phase_report(Phase::Leave, &heard, 1_000_000, 0.5, 3);
        assert_eq!(leave["complete"], false);
        let silent = presence_phase_report(Phase::Leave, &PresenceTally::default(), 0, 0.0, 3);
        assert!(silent["settle_ms"].is_null());
    }
}
