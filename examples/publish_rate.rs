//! Publish throughput: how many events per second one node accepts into rooms, through the HTTP
//! API (concurrent requests) or NATS (request-reply on `<prefix>.room.<id>`, many in flight),
//! whether or not the room type keeps history. With `--server-pid` it also reports the node's CPU
//! seconds and resident memory after the run; with `--nats` and a history stream name, the
//! stream's bytes and messages (what JetStream keeps for these rooms).
//!
//! ```sh
//! bash examples/bench.sh publish-rate          # history off
//! BENCH_HISTORY_SIZE=100 bash examples/bench.sh publish-rate
//! ```
//! Loopback only: it refuses a node outside 127.0.0.0/8.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use futures_util::StreamExt;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
struct Args {
    /// The node's HTTP address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    node: SocketAddr,
    #[arg(long, default_value = "bench")]
    api_key: String,
    #[arg(long, default_value = "load")]
    room_type: String,
    /// Rooms the events are spread over, round robin.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Publishes in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// `http` (POST /api/publish) or `nats` (request-reply on the room subject).
    #[arg(long, default_value = "http")]
    via: String,
    #[arg(long)]
    nats: Option<String>,
    #[arg(long, default_value = "realtime")]
    subject_prefix: String,
    /// JetStream stream to report on after the run (e.g. `<prefix>_history_load`).
    #[arg(long)]
    history_stream: Option<String>,
    #[arg(long)]
    server_pid: Option<u32>,
    /// Payload bytes of each event's `data.pad`.
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
}

/// The process's CPU seconds (user + system) and resident KiB, from /proc.
fn process_usage(pid: u32) -> anyhow::Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit(')').next().context("stat format")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .context("VmRSS")?
        .parse()?;
    Ok((ticks / ticks_per_sec, rss_kib))
}

fn body(args: &Args, index: usize, pad: &str) -> (String, Value) {
    let room = format!("{}:rate{}", args.room_type, index % args.rooms);
    let event = json!({"event":"match.update","data":{"n":index,"pad":pad}});
    (room, event)
}

async fn run_http(args: &Args, pad: &str) -> anyhow::Result<usize> {
    let http = reqwest::Client::new();
    let url = format!("http://{}/api/publish", args.node);
    let accepted = futures_util::stream::iter(0..args.events)
        .map(|index| {
            let (room, mut event) = body(args, index, pad);
            event["room"] = json!(room);
            let request = http
                .post(&url)
                .header("X-API-Key", &args.api_key)
                .json(&event);
            async move {
                request
                    .send()
                    .await
                    .map(|response| response.status().is_success())
            }
        })
        .buffer_unordered(args.concurrency)
        .filter(|outcome| std::future::ready(matches!(outcome, Ok(true))))
        .count()
        .await;
    Ok(accepted)
}

async fn run_nats(args: &Args, pad: &str) -> anyhow::Result<usize> {
    let url = args
        .nats
        .as_deref()
        .context("--via nats needs --nats URL")?;
    let client = async_nats::connect(url).await?;
    let accepted = futures_util::stream::iter(0..args.events)
        .map(|index| {
            let (room, event) = body(args, index, pad);
            let subject = format!("{}.room.{room}", args.subject_prefix);
            let client = client.clone();
            async move {
                let reply = client.request(subject, event.to_string().into()).await?;
                let answer: Value = serde_json::from_slice(&reply.payload)?;
                anyhow::Ok(answer["ok"] == true)
            }
        })
        .buffer_unordered(args.concurrency)
        .filter(|outcome| std::future::ready(matches!(outcome, Ok(true))))
        .count()
        .await;
    Ok(accepted)
}

/// The stream's `state` (messages, bytes, subjects) through the JetStream API.
async fn stream_state(url: &str, stream: &str) -> anyhow::Result<Value> {
    let client = async_nats::connect(url).await?;
    let reply = client
        .request(format!("$JS.API.STREAM.INFO.{stream}"), "".into())
        .await?;
    let info: Value = serde_json::from_slice(&reply.payload)?;
    Ok(info["state"].clone())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.node.ip().is_loopback(),
        "this tool targets loopback only"
    );
    ensure!(
        args.rooms > 0 && args.concurrency > 0,
        "rooms and concurrency must be at least 1"
    );
    let pad = "x".repeat(args.payload_bytes);
    let before = args.server_pid.map(process_usage).transpose()?;
    let started = Instant::now();
    let accepted = match args.via.as_str() {
        "http" => run_http(&args, &pad).await?,
        "nats" => run_nats(&args, &pad).await?,
        other => bail!("--via is http or nats, not {other}"),
    };
    let seconds = started.elapsed().as_secs_f64();
    // Let the node settle (fan-outs, history writes) before its memory is read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = args.server_pid.map(process_usage).transpose()?;
    let mut report = json!({
        "via": args.via,
        "rooms": args.rooms,
        "events": args.events,
        "accepted": accepted,
        "concurrency": args.concurrency,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "events_per_sec": (accepted as f64 / seconds).round(),
    });
    if let (Some((cpu_before, _)), Some((cpu_after, rss_kib))) = (before, after) {
        report["server_cpu_seconds"] = json!(((cpu_after - cpu_before) * 100.0).round() / 100.0);
        report["server_rss_kib"] = json!(rss_kib);
    }
    if let (Some(url), Some(stream)) = (&args.nats, &args.history_stream) {
        report["history_stream"] = stream_state(url, stream).await?;
    }
    println!("{report}");
    ensure!(
        accepted == args.events,
        "{} publishes were refused",
        args.events - accepted
    );
    Ok(())
}
