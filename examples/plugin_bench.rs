//! Per-event cost of plugins with reused instances: one plugin and a chain of three, for a small
//! and a 16 KiB payload. Measures `PluginHost::run_chain` (the work done once per event before
//! fan-out), single-threaded, after a warm-up.
//!
//! ```sh
//! cargo build --profile plugin --target wasm32-unknown-unknown -p match-score-guard -p misbehaving-plugin
//! cargo run --release -p realtime-examples --bin plugin-bench
//! ```
//!
//! `examples/plugin_cost.sh` runs it per case under callgrind too (instructions per event).

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use realtime_core::config::{FailurePolicy, PluginEntry, Settings};
use realtime_core::plugins::{ChainEvent, ChainResult, PluginHost};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Where the plugin .wasm files are.
    #[arg(long, default_value = "target/wasm32-unknown-unknown/plugin")]
    plugin_dir: PathBuf,
    /// Events per measurement.
    #[arg(long, default_value_t = 20_000)]
    iterations: u32,
    /// Only the measurements whose label contains this (e.g. `one plugin`, `16KiB`), for
    /// profiling one case under callgrind or perf.
    #[arg(long, default_value = "")]
    only: String,
    /// `plugins.max_instances` (the pool's size). Under valgrind, 4 lets plugin memories
    /// reserve the whole wasm32 address space as in a server (no bounds checks); the default
    /// pool does not fit valgrind's address space, and the plugins then run with bounds checks.
    #[arg(long)]
    max_instances: Option<u32>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut settings = Settings::defaults();
    if let Some(max_instances) = args.max_instances {
        settings.plugin_runtime.max_instances = max_instances;
    }
    let guard = args.plugin_dir.join("match_score_guard.wasm");
    let tagger = args.plugin_dir.join("misbehaving_plugin.wasm");
    anyhow::ensure!(
        guard.is_file() && tagger.is_file(),
        "build the plugins first (see the doc comment)"
    );
    settings.plugins.insert(
        "guard".into(),
        PluginEntry {
            path: guard,
            config: json!({}),
        },
    );
    for name in ["tag-a", "tag-b"] {
        settings.plugins.insert(
            name.into(),
            PluginEntry {
                path: tagger.clone(),
                config: json!({ "tag": name }),
            },
        );
    }
    let host = PluginHost::load(&settings)?.expect("plugins are configured");

    let small =
        json!({"matchId": "m-1", "players": ["ana", "ben"], "scores": {"ana": 3, "ben": 1}});
    let mut large = small.clone();
    large["commentary"] = json!("x".repeat(16 * 1024 - small.to_string().len() - 16));
    let one = vec!["guard".to_owned()];
    let three = vec!["guard".to_owned(), "tag-a".to_owned(), "tag-b".to_owned()];
    let mut results = Vec::new();
    for (payload_label, payload) in [("small", small.to_string()), ("16KiB", large.to_string())] {
        for (chain_label, chain) in [("one plugin", &one), ("chain of three", &three)] {
            let label = format!("{chain_label}, {payload_label}");
            if !label.contains(&args.only) {
                continue;
            }
            let event = ChainEvent {
                name: "match.update",
                room_id: "competition:1",
                room_type: "competition",
                sender: None,
                timestamp_ms: 0,
                payload: &payload,
            };
            let run = || {
                let result = host.run_chain(chain, FailurePolicy::FailOpen, &event);
                assert!(
                    matches!(result, ChainResult::Deliver(Some(_))),
                    "{result:?}"
                );
            };
            // Once, untimed: the plugins did their work (the guard added the leader; the rest of
            // the payload came through).
            let ChainResult::Deliver(Some(replacement)) =
                host.run_chain(chain, FailurePolicy::FailOpen, &event)
            else {
                anyhow::bail!("{label}: the chain replaced nothing");
            };
            let delivered: serde_json::Value = serde_json::from_str(replacement.get())?;
            anyhow::ensure!(
                delivered["leader"] == "ana" && delivered["scores"] == small["scores"],
                "{label}: {delivered}"
            );
            for _ in 0..1_000 {
                run();
            }
            let started = Instant::now();
            for _ in 0..args.iterations {
                run();
            }
            let per_event_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(args.iterations);
            let per_plugin_us = per_event_us / chain.len() as f64;
            println!(
                "{chain_label:>15}, {payload_label:>5} payload ({} bytes): {per_event_us:8.2} µs per event, {per_plugin_us:8.2} µs per plugin",
                payload.len()
            );
            results.push(json!({
                "chain": chain_label, "payload": payload_label, "payload_bytes": payload.len(),
                "us_per_event": (per_event_us * 100.0).round() / 100.0,
                "us_per_plugin": (per_plugin_us * 100.0).round() / 100.0,
            }));
        }
    }
    println!(
        "{}",
        json!({ "plugin_bench": results, "iterations": args.iterations })
    );
    Ok(())
}
