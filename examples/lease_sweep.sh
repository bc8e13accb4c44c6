#!/usr/bin/env bash
#! The cost of sweeping a dead node from Redis: registers SOCKETS sockets (one room membership
#! each, in rooms of 1,000) under a node lease of one second, with the product's own Lua helpers
#! (core/src/stores/redis/scripts/), lets the lease lapse, then times the one script call that
#! sweeps it (take_offline.lua, called again while it says more is left, as the offline scheduler
#! does). Prints one JSON line: the sockets, the calls, the wall time, the longest call and the
#! sum of the calls as Redis itself timed them (SLOWLOG): how long Redis served nobody else at a
#! stretch, and in all. Uses its own key prefix on the Redis at REDIS_HOST:REDIS_PORT (default
#! 127.0.0.1:6379), leaves no key behind (`keys_left`) and touches nothing else.
#!
#!   bash examples/lease_sweep.sh [SOCKETS]     (default 16700: one node of cluster-100k)
set -euo pipefail
cd "$(dirname "$0")/.."
sockets="${1:-16700}"
host="${REDIS_HOST:-127.0.0.1}"
port="${REDIS_PORT:-6379}"
scripts=core/src/stores/redis/scripts
prefix="sweepbench$$:"
node="node-sweep-$$"
cli() { redis-cli -h "$host" -p "$port" "$@"; }
helpers="$(cat "$scripts/now_ms.lua" "$scripts/leases.lua")"

# What connect.lua and join.lua write for each socket, in one call (the fixture, not the
# product's path: registering 16,700 sockets one script call at a time would take a while).
register='
local now = now_ms()
local node, count = ARGV[2], tonumber(ARGV[3])
for i = 1, count do
  local user, socket, room = "u" .. i, string.format("%016x", i), "load:r" .. math.floor(i / 1000)
  redis.call("HSET", presence_key(user), socket, node)
  redis.call("HSET", node_sockets_key(node), socket, user)
  redis.call("ZADD", ONLINE, "inf", user)
  redis.call("HSET", room_key(room, "owner"), socket, user)
  redis.call("HSET", room_key(room, "node"), socket, node)
  redis.call("HINCRBY", room_key(room, "users"), user, 1)
  redis.call("SADD", node_memberships_key(node), socket .. " " .. room)
  redis.call("SADD", user_rooms_key(user), room)
end
return count'

cli EVAL "$helpers$(cat "$scripts/announce_node.lua")" 0 "$prefix" "$node" '{}' 1000 token >/dev/null
cli EVAL "$helpers$register" 0 "$prefix" "$node" "$sockets" >/dev/null
sleep 1.2
# 1 ms: the sweeping calls are logged, the commands inside them (microseconds each) are not.
cli CONFIG SET slowlog-log-slower-than 1000 >/dev/null
cli CONFIG SET slowlog-max-len 10000 >/dev/null
cli SLOWLOG RESET >/dev/null
# As the offline scheduler does: call again while the answer's first element says more is left.
started=$(date +%s%N)
calls=0
taken=0
while :; do
  calls=$((calls + 1))
  answer=$(cli EVAL "$helpers$(cat "$scripts/take_offline.lua")" 0 "$prefix" 100000)
  taken=$((taken + $(echo "$answer" | tail -n +2 | grep -c . || true)))
  [ "$(echo "$answer" | head -1)" = 1 ] || break
done
finished=$(date +%s%N)
# SLOWLOG GET prints, per entry, its id, timestamp and duration (us) on lines of their own, then
# the command's arguments: the longest call and the sum over the sweep's calls.
slowlog=$(mktemp)
trap 'rm -f "$slowlog"' EXIT
cli SLOWLOG GET 10000 > "$slowlog"
durations=$(python3 -c '
import sys
lines = [line.strip() for line in sys.stdin]
values = [int(lines[i + 2]) for i in range(len(lines) - 3)
          if lines[i].isdigit() and lines[i + 1].isdigit() and lines[i + 2].isdigit()
          and int(lines[i + 1]) > 1_000_000_000 and lines[i + 3] == "EVAL"]
print(round(max(values) / 1000, 1) if values else 0, round(sum(values) / 1000, 1), len(values))' < "$slowlog")
cli CONFIG SET slowlog-log-slower-than 10000 >/dev/null
cli CONFIG SET slowlog-max-len 128 >/dev/null
left=$(cli --scan --pattern "${prefix}*" | wc -l)
read -r longest_ms total_ms timed_calls <<<"$durations"
echo "{\"sockets\": $sockets, \"users_taken_offline\": $taken, \"calls\": $calls, \"wall_ms\": $(( (finished - started) / 1000000 )), \"redis_longest_call_ms\": $longest_ms, \"redis_total_ms\": $total_ms, \"calls_timed\": $timed_calls, \"keys_left\": $left}"
