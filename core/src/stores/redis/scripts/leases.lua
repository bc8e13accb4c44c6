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

-- Removes everything the node registered, and its lease and status. Its users with no other
-- socket go offline at the next `take_offline`: their sockets died with the node.
local function sweep_node(node, now)
  local sockets = redis.call('HGETALL', node_sockets_key(node))
  for i = 1, #sockets, 2 do remove_socket(sockets[i + 1], sockets[i], node, now) end
  for _, membership in ipairs(redis.call('SMEMBERS', node_memberships_key(node))) do
    local space = string.find(membership, ' ', 1, true)
    remove_membership(string.sub(membership, space + 1), string.sub(membership, 1, space - 1))
  end
  redis.call('DEL', node_sockets_key(node), node_memberships_key(node))
  redis.call('ZREM', LEASES, node)
  redis.call('HDEL', STATUSES, node)
end

-- Sweeps every node whose lease ran out (usually none: one sorted-set lookup).
local function sweep_lapsed(now)
  for _, node in ipairs(redis.call('ZRANGE', LEASES, '-inf', now, 'BYSCORE')) do
    sweep_node(node, now)
  end
end
