-- ARGV: prefix, room, socket, user, node, capacity. Returns 'nolease' (the node holds no live
-- lease: nothing written), 'blocked', 'first', 'joined', 'already' or 'full'.
local now = now_ms()
local room, socket, user, node = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not lease_live(node, now) then return 'nolease' end
local blocked_until = redis.call('HGET', room_key(room, 'blocked'), user)
if blocked_until and tonumber(blocked_until) > now then return 'blocked' end
sweep_lapsed(now)
local owner, users = room_key(room, 'owner'), room_key(room, 'users')
if redis.call('HEXISTS', owner, socket) == 1 then return 'already' end
local has_user = redis.call('HEXISTS', users, user) == 1
if not has_user and redis.call('HLEN', users) >= tonumber(ARGV[6]) then return 'full' end
redis.call('HSET', owner, socket, user)
redis.call('HSET', room_key(room, 'node'), socket, node)
redis.call('HINCRBY', users, user, 1)
redis.call('SADD', node_memberships_key(node), socket .. ' ' .. room)
redis.call('SADD', user_rooms_key(user), room)
if has_user then return 'joined' end
return 'first'
