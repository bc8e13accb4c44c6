#!/usr/bin/env bash
#! What one event costs in plugins, per case of examples/plugin_bench.rs (one plugin and a chain
#! of three, 68 B and 16 KiB payloads): instructions per event counted by valgrind's callgrind,
#! which are the same on any idle or busy x86_64 machine for the same build (wall time on a
#! shared virtual machine varies by half from run to run), and wall time per event, the fastest
#! and the median of RUNS runs (default 7).
#!
#!   bash examples/plugin_cost.sh [PLUGIN_DIR]
#!
#! PLUGIN_DIR (default: the plugins this checkout builds) lets two builds of the plugins be
#! compared with the same host. Instructions are the difference between a run of 6,000 and one
#! of 1,000 events, divided by 5,000, so loading and compiling are left out. Under valgrind the
#! pool is 4 instances: the default pool's address-space reservation does not fit valgrind's,
#! and plugins would run with bounds checks, unlike in a server.
set -euo pipefail
cd "$(dirname "$0")/.."
plugin_dir="${1:-target/wasm32-unknown-unknown/plugin}"
runs="${RUNS:-7}"
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
if [ "$plugin_dir" = target/wasm32-unknown-unknown/plugin ]; then
    cargo build -q --profile plugin --target wasm32-unknown-unknown -p match-score-guard -p misbehaving-plugin
fi
cargo build -q --release -p realtime-examples --bin plugin-bench
bench=target/release/plugin-bench
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

instructions() { # CASE EVENTS -> total instructions of one run
    valgrind --tool=callgrind --callgrind-out-file="$work/out" "$bench" --max-instances 4 \
        --plugin-dir "$plugin_dir" --only "$1" --iterations "$2" >/dev/null 2>&1
    callgrind_annotate --auto=no "$work/out" | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'
}

for case in "one plugin, small" "chain of three, small" "one plugin, 16KiB" "chain of three, 16KiB"; do
    instructions "$case" 1000 >/dev/null # compiles the plugins for valgrind's CPU model once
    few=$(instructions "$case" 1000)
    many=$(instructions "$case" 6000)
    events=200000
    case "$case" in *16KiB*) events=20000 ;; esac
    walls=$(for _ in $(seq "$runs"); do
        "$bench" --plugin-dir "$plugin_dir" --only "$case" --iterations "$events" |
            sed -nE '1s/.*: +([0-9.]+) µs per event.*/\1/p'
    done | sort -n)
    fastest=$(echo "$walls" | head -1)
    median=$(echo "$walls" | sed -n "$(((runs + 1) / 2))p")
    echo "{\"case\": \"$case\", \"instructions_per_event\": $(((many - few) / 5000)), \"wall_us_fastest\": $fastest, \"wall_us_median\": $median, \"runs\": $runs}"
done
