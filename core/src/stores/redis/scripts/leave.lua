-- KEYS: sockets, owner, users, the user's rooms. ARGV: socket, room. Returns 'last', 'left' or
-- 'none'.
purge(now_ms())
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 'none' end
local user = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if user and redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then
  redis.call('HDEL', KEYS[3], user)
  redis.call('ZREM', KEYS[4], ARGV[2])
  return 'last'
end
return 'left'
