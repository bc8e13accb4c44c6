#!/usr/bin/env bash
#! Reruns the benchmark scenarios of docs/benchmarks.md: starts release servers on loopback,
#! drives them with the load tool (examples/loadgen/), prints the load tool's JSON line and stops
#! the servers.
#!
#!   bash examples/bench.sh SCENARIO [extra loadgen flags]
#!
#! Scenarios (all on a room type `load` configured below, so nothing else in the config matters):
#!   one-node     1 node, memory backends, 10,000 connections in 20 rooms, 200 HTTP broadcasts
#!   two-nodes    2 nodes on Redis + NATS, the same load, broadcasts published on NATS
#!                (this and the other scenarios on Redis + NATS print a second JSON line: the CPU
#!                Redis and NATS spent, per connection and per delivered message)
#!   big-room     2 nodes on Redis + NATS, one 1,000-member room spread over both, NATS broadcasts
#!   interest     2 nodes on Redis + NATS, 4,000 connections in 20 rooms: node A holds members of
#!                5 rooms, node B of 15; 400 NATS broadcasts over all 20. The JSON line's
#!                `interest` gives per node the broadcasts into its rooms and the frames its
#!                broker brought it (inbound traffic follows a node's rooms)
#!   max          1 node, 19,000 connections (this machine's file limit is 20,000 per process)
#!   fanout       1 node, one room of 10,000, 100 broadcasts of 64 B at 100/s
#!   idle         1 node, 10,000 connections that only hold (memory per idle connection)
#!   presence     one-node with room presence on (member listing; joins and leaves not pushed)
#!   announce     one-node with joins and leaves pushed to the room (10,000 joins into rooms
#!                of 500 send ~2.5 million announcement frames while connecting)
#!   join-storm   1 node, memory backends, presence on: 5,000 users join one room at 1,000/s,
#!                hold, then all leave at 1,000/s (--leave-rate); the JSON line's `presence`
#!                gives per phase the frames and joins/leaves heard, the time until the last
#!                announcement, the server CPU and whether every member's view was complete.
#!                BENCH_ANNOUNCE=true (default) pushes one frame per join and leave to every
#!                member (~12.5 million each way); BENCH_ANNOUNCE=batched one room.presence_diff
#!                per interval (BENCH_ANNOUNCE_INTERVAL_MS, default 1000): run both and compare
#!   plugins      one-node with a plugin on every event (parses the payload and rewrites it)
#!   heartbeats   2 nodes on Redis + NATS, 10,000 connections in 20 rooms that only hold for
#!                30 s with a heartbeat interval of 2 s instead of 20 (ten times the heartbeats
#!                of the default; they write nothing to Redis): the server CPU heartbeats cost
#!   cluster-100k 6 nodes on Redis + NATS, 100,000 connections (6 load-tool processes, 5 source
#!                addresses, ~16,700 sockets per node: under the 20,000-descriptor limit) at
#!                1,000/s into 100 rooms of 1,000, 100 broadcasts through NATS, then a hold of
#!                BENCH_HOLD_SECONDS (default 600) with heartbeats; prints a second JSON line
#!                with the CPU Redis and NATS spent, per connection and per delivered message
#!   churn        1 node, memory backends, announcements on: BENCH_CYCLES (default 10) cycles of
#!                8,000 connections joining 20 rooms at 2,000/s and leaving at 4,000/s; prints
#!                the server's RSS at each cycle's peak and 12 s after its leave, then once more
#!                after the presence linger (about 80 s; memory churn leaves)
#!   lease-sweep  no server: the one Redis script call that sweeps a dead node of 16,700 sockets
#!                (one membership each), and how long Redis served nobody else meanwhile
#!                (examples/lease_sweep.sh; [SOCKETS] as an extra argument)
#!   publish-rate 1 node (memory backends), 50,000 HTTP publishes into 100 rooms, 64 in flight:
#!                events per second one node accepts, its CPU and memory afterwards
#!   publish-rate-nats  1 node on Redis + NATS, 50,000 publishes on NATS (request-reply, 64 in
#!                flight) into 100 rooms; with history the JetStream stream's size is reported
#!   floor        no server: the loopback floor for big-room (1,000 sockets written by two
#!                threads with one plain write each, read by two epoll threads, each reader
#!                hearing from both writers as the load tool's workers hear from both nodes)
#!   floor-nats   floor with the broadcasts reaching the two writers through NATS, as
#!                big-room's reach its two nodes: the floor of a NATS-fed fan-out
#!   floor-relay  floor-nats with the product's two broker hops: the broadcast is published on
#!                an inbound subject, taken by one writer of a queue group and republished on
#!                the fan-out subject, as one node takes `realtime.room.<id>` and publishes the
#!                frame to every node with a member
#! The floors take `--reader-processes` to run each reader in a process of its own, as the load
#! tool's workers are, and `--yield-every 64` to give up the CPU after every 64 writes, as the
#! server's fan-out does (`bash examples/bench.sh floor-relay --yield-every 64`).
#! BENCH_PIN=1 runs the servers on CPU 0 and the load tool on CPU 1 (`taskset`), so that they do
#! not share cores, as real clients do not (Redis and NATS stay unpinned). BENCH_SERVER_ENV adds
#! environment assignments to every server, e.g. BENCH_SERVER_ENV=REALTIME_SERVER__FANOUT_YIELD_EVERY=0.
#! BENCH_HISTORY_SIZE=N keeps N events per room of the `load` type (history_ttl_secs 600; kept in
#! memory on one node without NATS, in JetStream with NATS): every scenario runs with history on.
#! Needs Redis and NATS on 127.0.0.1 for the cluster scenarios, and NATS for the NATS floors
#! (`bash tests/run` starts them).
set -euo pipefail
cd "$(dirname "$0")/.."

scenario="${1:-}"
shift || true
base_port="${BENCH_PORT:-18201}"

cargo build --release -q -p realtime-core -p realtime-examples
if [ "$scenario" = plugins ]; then
    rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
    cargo build -q --profile plugin --target wasm32-unknown-unknown -p misbehaving-plugin
fi

floor_flags=(--members 1000 --writers 2 --readers 2 --messages 200 --publish-rate 50)
case "$scenario" in
    floor) exec target/release/loopback-floor "${floor_flags[@]}" "$@" ;;
    floor-nats)
        exec target/release/loopback-floor "${floor_flags[@]}" --nats nats://127.0.0.1:4222 "$@"
        ;;
    floor-relay)
        exec target/release/loopback-floor "${floor_flags[@]}" --nats nats://127.0.0.1:4222 \
            --relay "$@"
        ;;
esac

workdir="$(mktemp -d)"
server_pids=()
cleanup() {
    for pid in "${server_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$workdir"
}
trap cleanup EXIT

presence=false
announce=false
# A TOML line of its own, set only for batched announcements (an empty line otherwise).
announce_interval=''
plugins='[]'
case "$scenario" in
    presence) presence=true ;;
    announce | churn) presence=true announce=true ;;
    join-storm)
        presence=true
        case "${BENCH_ANNOUNCE:-true}" in
            batched)
                # A string in TOML, where true and false are booleans.
                announce='"batched"'
                announce_interval="announce_interval_ms = ${BENCH_ANNOUNCE_INTERVAL_MS:-1000}"
                ;;
            *) announce="${BENCH_ANNOUNCE:-true}" ;;
        esac
        ;;
    plugins) plugins='["tagger"]' ;;
esac
cat >"$workdir/bench.toml" <<EOF
[server]
max_connections = 20000

[api]
key = "bench"

[database]
url = "sqlite::memory:"

[log]
level = "warn"

[room_types.load]
capacity = 20000
client_publish = false
presence = $presence
announce = $announce
$announce_interval
join = "open"
plugins = $plugins
history_size = ${BENCH_HISTORY_SIZE:-0}
history_ttl_secs = 600
EOF
if [ "$scenario" = plugins ]; then
    cat >>"$workdir/bench.toml" <<EOF

[plugins.tagger]
path = "$PWD/target/wasm32-unknown-unknown/plugin/misbehaving_plugin.wasm"
config = { tag = "bench" }
EOF
fi

server_pin=()
load_pin=()
if [ "${BENCH_PIN:-0}" = 1 ]; then
    server_pin=(taskset -c 0)
    load_pin=(taskset -c 1)
fi
read -r -a server_env <<<"${BENCH_SERVER_ENV:-}"

# start_node PORT [env assignments...]: a release server on 127.0.0.1:PORT with the bench config.
start_node() {
    local port="$1"
    shift
    # The load tool is many users behind a few loopback addresses: lift the per-address share.
    env "$@" "${server_env[@]}" REALTIME_SERVER__LISTEN="127.0.0.1:$port" \
        REALTIME_LIMITS__MAX_CONNECTIONS_PER_ADDRESS=0 \
        "${server_pin[@]}" target/release/realtime --config "$workdir/bench.toml" serve &
    server_pids+=("$!")
    for _ in $(seq 1 100); do
        if curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "node on port $port did not become healthy" >&2
    exit 1
}

cluster_env=(REALTIME_REDIS__URL=redis://127.0.0.1:6379 REALTIME_NATS__URL=nats://127.0.0.1:4222
    REALTIME_NATS__SUBJECT_PREFIX="bench$$" REALTIME_REDIS__KEY_PREFIX="bench$$:")
one_node() { start_node "$base_port"; nodes="127.0.0.1:$base_port"; }
two_nodes() {
    start_node "$base_port" "${cluster_env[@]}"
    start_node "$((base_port + 1))" "${cluster_env[@]}"
    nodes="127.0.0.1:$base_port,127.0.0.1:$((base_port + 1))"
}
pids() { local IFS=,; echo "${server_pids[*]}"; }
# CPU seconds a process has used so far (user + system), from /proc.
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
# Runs the load tool, then prints the CPU that the machine's Redis and NATS spent meanwhile, in
# all and per connection and per delivered message (from the load tool's own JSON line).
with_service_cpu() {
    local redis_pid nats_pid redis_before nats_before line status=0
    redis_pid=$(pgrep -xo redis-server)
    nats_pid=$(pgrep -xo nats-server)
    redis_before=$(cpu_seconds "$redis_pid")
    nats_before=$(cpu_seconds "$nats_pid")
    line=$("$@") || status=$?
    echo "$line"
    [ -n "$line" ] || return "$status"
    python3 - "$line" "$redis_before" "$(cpu_seconds "$redis_pid")" "$nats_before" \
        "$(cpu_seconds "$nats_pid")" <<'PY'
import json, sys
run = json.loads(sys.argv[1])
redis = float(sys.argv[3]) - float(sys.argv[2])
nats = float(sys.argv[5]) - float(sys.argv[4])
connections = max(run["connections"]["held"], 1)
delivered = max(run["messages"]["delivered"], 1)
print(json.dumps({"services": {
    "redis_cpu_s": round(redis, 2), "nats_cpu_s": round(nats, 2),
    "redis_cpu_us_per_connection": round(redis * 1e6 / connections, 1),
    "nats_cpu_us_per_connection": round(nats * 1e6 / connections, 1),
    "redis_cpu_us_per_delivered_message": round(redis * 1e6 / delivered, 2),
    "nats_cpu_us_per_delivered_message": round(nats * 1e6 / delivered, 2)}}))
PY
    return "$status"
}
loadgen() {
    "${load_pin[@]}" target/release/loadgen --nodes "$nodes" --server-pid "$(pids)" --room-type load \
        --api-key bench --assert-clean "$@"
}

case "$scenario" in
    one-node | presence | announce | plugins)
        one_node
        loadgen --connections 10000 --workers 2 --rate 500 --rooms 20 --messages 200 \
            --publish-rate 50 "$@"
        ;;
    two-nodes)
        two_nodes
        with_service_cpu loadgen --connections 10000 --workers 2 --rate 500 --rooms 20 --messages 200 \
            --publish-rate 50 --nats nats://127.0.0.1:4222 --subject-prefix "bench$$" "$@"
        ;;
    interest)
        # Node A takes every fourth connection, node B the rest: A holds members of 5 of the 20
        # rooms, B of 15. The JSON line's `interest` compares, per node, the broadcasts into
        # its rooms with the frames its broker brought it (`realtime_broker_frames_in_total`).
        two_nodes
        nodes="127.0.0.1:$base_port,127.0.0.1:$((base_port + 1)),127.0.0.1:$((base_port + 1)),127.0.0.1:$((base_port + 1))"
        with_service_cpu loadgen --connections 4000 --workers 2 --rate 500 --rooms 20 --messages 400 \
            --publish-rate 100 --nats nats://127.0.0.1:4222 --subject-prefix "bench$$" "$@"
        ;;
    big-room)
        two_nodes
        with_service_cpu loadgen --connections 1000 --workers 2 --rate 500 --rooms 1 --messages 200 \
            --publish-rate 50 --nats nats://127.0.0.1:4222 --subject-prefix "bench$$" "$@"
        ;;
    max)
        one_node
        loadgen --connections 19000 --workers 2 --rate 1000 --rooms 20 --messages 100 \
            --publish-rate 50 "$@"
        ;;
    fanout)
        one_node
        loadgen --connections 10000 --workers 2 --rate 1000 --rooms 1 --messages 100 \
            --publish-rate 100 --payload-bytes 64 "$@"
        ;;
    heartbeats)
        cluster_env+=(REALTIME_PRESENCE__HEARTBEAT_INTERVAL_SECS=2 REALTIME_PRESENCE__TTL_SECS=10)
        two_nodes
        with_service_cpu loadgen --connections 10000 --workers 2 --rate 1000 --rooms 20 --messages 0 \
            --drain-seconds 30 "$@"
        ;;
    lease-sweep)
        exec bash examples/lease_sweep.sh "$@"
        ;;
    publish-rate)
        one_node
        target/release/publish-rate --node "127.0.0.1:$base_port" --rooms 100 --events 50000 \
            --concurrency 64 --server-pid "$(pids)" "$@"
        ;;
    publish-rate-nats)
        start_node "$base_port" "${cluster_env[@]}"
        target/release/publish-rate --node "127.0.0.1:$base_port" --rooms 100 --events 50000 \
            --concurrency 64 --via nats --nats nats://127.0.0.1:4222 --subject-prefix "bench$$" \
            --history-stream "bench$$_history_load" --server-pid "$(pids)" "$@"
        ;;
    idle)
        one_node
        loadgen --connections 10000 --workers 2 --rate 1000 --rooms 20 --messages 0 "$@"
        ;;
    cluster-100k)
        for index in 0 1 2 3 4 5; do
            start_node "$((base_port + index))" "${cluster_env[@]}"
        done
        nodes=$(for index in 0 1 2 3 4 5; do printf '127.0.0.1:%s,' "$((base_port + index))"; done)
        nodes=${nodes%,}
        hold="${BENCH_HOLD_SECONDS:-600}"
        with_service_cpu loadgen --connections 100000 --workers 6 --rate 1000 --rooms 100 \
            --messages 100 --publish-rate 10 --nats nats://127.0.0.1:4222 \
            --subject-prefix "bench$$" --drain-seconds "$hold" --max-seconds "$((hold + 900))" "$@"
        ;;
    churn)
        one_node
        # measure_memory CYCLE WHEN LOADGEN_LINE: the node's memory as one JSON line.
        measure_memory() {
            rss_now=$(awk '/^VmRSS/ {print $2 * 1024}' "/proc/${server_pids[0]}/status")
            # Where the resident memory is: anonymous (heap, stacks) or file (the binary), and
            # the allocator's own account (realtime_allocator_bytes).
            rollup=$(awk '/^(Anonymous|Rss):/ {printf "%s=%d ", $1, $2 * 1024}' \
                "/proc/${server_pids[0]}/smaps_rollup")
            allocator=$(curl -s "http://127.0.0.1:$base_port/metrics" |
                awk '/^realtime_allocator_bytes/ {printf "%s ", $0}')
            python3 -c 'import json, re, sys
run = json.loads(sys.argv[1])
rollup = dict(item.rstrip(":").split("=") for item in sys.argv[4].replace(":=", "=").split())
heap = {m.group(1): int(float(m.group(2))) for m in re.finditer(r"state=\"(\w+)\"\} (\S+)", sys.argv[5])}
print(json.dumps({"cycle": int(sys.argv[2]), "when": sys.argv[6], "held": run["connections"]["held"],
    "dropped": run["connections"]["dropped"], "rss_before": run["server"]["rss_before"],
    "rss_peak": run["server"]["rss_after"], "rss_after_leave": int(sys.argv[3]),
    "after_leave": {"anonymous": int(rollup.get("Anonymous", 0)),
        "file_backed": int(rollup.get("Rss", 0)) - int(rollup.get("Anonymous", 0)),
        "allocator_in_use": heap.get("in_use"), "allocator_free": heap.get("free"),
        "allocator_mapped": heap.get("mapped")}}))' \
                "$3" "$1" "$rss_now" "$rollup" "$allocator" "$2"
        }
        idle='{"connections":{"held":0,"dropped":0},"server":{"rss_before":0,"rss_after":0}}'
        # Cycle 0: the fresh node, before any connection.
        measure_memory 0 fresh "$idle"
        cycles="${BENCH_CYCLES:-10}"
        for cycle in $(seq 1 "$cycles"); do
            # Not stopped by a dropped connection (the load tool exits non-zero on one):
            # the cycle's line says how many, and memory is what this scenario is about.
            line=$(loadgen --connections 8000 --workers 2 --rate 2000 --rooms 20 \
                --messages 0 --drain-seconds 1 --leave-rate 4000 "$@") || true
            # Longer than the allocator trimmer's check interval (10 s), so a trim shows.
            sleep 12
            measure_memory "$cycle" "12 s after the leave" "$line"
        done
        # The users who left linger in presence for its TTL (60 s by default) before going
        # offline, and the trimmer trims once more after that (TTL + a sweep + its 10 s check).
        sleep 65
        measure_memory "$cycles" "after the presence linger" "$idle"
        ;;
    join-storm)
        # The leave phase's own closes are not drops, so --assert-clean still holds.
        one_node
        loadgen --connections 5000 --workers 2 --rate 1000 --rooms 1 --messages 0 \
            --leave-rate 1000 "$@"
        ;;
    *)
        sed -n 's/^#! \{0,1\}//p' "$0" >&2
        exit 2
        ;;
esac
