-- Node leases, shared by the presence and room scripts (prepended to them, after now_ms.lua).
-- ARGV[1] of every such script is the key prefix.
--
-- A node renews its lease (`nodes:until`: node -> lease until, ms) every few seconds. A socket or
-- a membership is written once, indexed under its node (`node:<node>:sockets`,
-- `node:<node>:memberships`), and lives while that lease lives. The first script to see a lapsed
-- lease removes everything its node registered (`sweep_lapsed`), so what any script reads after
-- it is only what live nodes hold: Redis hears from a node every few seconds, not from each of
-- its sockets.
local PREFIX = ARGV[1]
local LEASES = PREFIX .. 'nodes:until'
local STATUSES = PREFIX .. 'nodes'
-- node -> the token of the process holding its lease (a random value per process).
local TOKENS = PREFIX .. 'nodes:token'
local ONLINE = PREFIX .. 'presence:online'

local function presence_key(user) return PREFIX .. 'presence:sockets:' .. user end
local function node_sockets_key(node) return PREFIX .. 'node:' .. node .. ':sockets' end
local function node_memberships_key(node) return PREFIX .. 'node:' .. node .. ':memberships' end
local function room_key(room, part) return PREFIX .. 'room:' .. room .. ':' .. part end
local function user_rooms_key(user) return PREFIX .. 'user:' .. user .. ':joined' end

local function lease_live(node, now)
  local until_ms = redis.call('ZSCORE', LEASES, node)
  return until_ms ~= false and tonumber(until_ms) > now
end

-- Removes one membership (socket ids and room ids hold no space). Returns 'last' (the user's
-- last socket in the room), 'left' or 'none'.
local function remove_membership(room, socket)
  local owner = room_key(room, 'owner')
  local user = redis.call('HGET', owner, socket)
  if not user then return 'none' end
  local node = redis.call('HGET', room_key(room, 'node'), socket)
  redis.call('HDEL', owner, socket)
  redis.call('HDEL', room_key(room, 'node'), socket)
  if node then redis.call('SREM', node_memberships_key(node), socket .. ' ' .. room) end
  if redis.call('HINCRBY', room_key(room, 'users'), user, -1) <= 0 then
    redis.call('HDEL', room_key(room, 'users'), user)
    redis.call('SREM', user_rooms_key(user), room)
    return 'last'
  end
  return 'left'
end

-- Removes one socket from presence; a user left with no socket stays online until `until_ms`.
local function remove_socket(user, socket, node, until_ms)
  local sockets = presence_key(user)
  if redis.call('HDEL', sockets, socket) == 0 then return end
  redis.call('HDEL', node_sockets_key(node), socket)
  if redis.call('HLEN', sockets) == 0 then
    redis.call('ZADD', ONLINE, until_ms, user)
  end
end

-- Sockets and memberships one script call sweeps at most (about 16 us of Redis time each, so a
-- call holds Redis for under 10 ms): a dead node of 16,700 sockets is swept over some 70 calls
-- (0.6 s of Redis time, measured by `examples/lease_sweep.sh`) instead of one call that would
-- stall every other client for that long.
local SWEEP_BUDGET = 500

-- Removes up to `budget` of the sockets and memberships the node registered; once none is left,
-- forgets its lease, status and token. Its users with no other socket go offline at the next
-- `take_offline`: their sockets died with the node. Returns the budget left, or -1 when the
-- node still has registrations to sweep.
local function sweep_node(node, now, budget)
  local sockets_key, memberships_key = node_sockets_key(node), node_memberships_key(node)
  local sockets = redis.call('HRANDFIELD', sockets_key, budget, 'WITHVALUES')
  for i = 1, #sockets, 2 do remove_socket(sockets[i + 1], sockets[i], node, now) end
  budget = budget - #sockets / 2
  if budget > 0 then
    for _, membership in ipairs(redis.call('SPOP', memberships_key, budget)) do
      local space = string.find(membership, ' ', 1, true)
      remove_membership(string.sub(membership, space + 1), string.sub(membership, 1, space - 1))
      budget = budget - 1
    end
  end
  if redis.call('EXISTS', sockets_key, memberships_key) > 0 then return -1 end
  redis.call('ZREM', LEASES, node)
  redis.call('HDEL', STATUSES, node)
  redis.call('HDEL', TOKENS, node)
  return budget
end

-- Sweeps the nodes whose lease ran out (usually none: one sorted-set lookup), one budget's worth
-- per call. Returns true when none is left to sweep.
local function sweep_lapsed(now)
  local budget = SWEEP_BUDGET
  for _, node in ipairs(redis.call('ZRANGE', LEASES, '-inf', now, 'BYSCORE')) do
    if budget <= 0 then return false end
    budget = sweep_node(node, now, budget)
    if budget < 0 then return false end
  end
  return true
end
