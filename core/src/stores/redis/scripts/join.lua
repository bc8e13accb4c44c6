-- KEYS: sockets, owner, users, blocked, the user's rooms. ARGV: socket, user, capacity, ttl ms,
-- room. Returns 'blocked', 'first', 'joined', 'already' or 'full'.
local now = now_ms()
local blocked_until = redis.call('HGET', KEYS[4], ARGV[2])
if blocked_until and tonumber(blocked_until) > now then
  return 'blocked'
end
purge(now)
local ttl = tonumber(ARGV[4])
-- The user's rooms: room -> until when a membership of the user there is known to live.
local function index_user_room()
  redis.call('ZADD', KEYS[5], 'GT', now + ttl, ARGV[5])
  redis.call('PEXPIRE', KEYS[5], ttl * 2)
end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  keep_alive(ttl, 0)
  index_user_room()
  return 'already'
end
local has_user = redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1
if not has_user and redis.call('HLEN', KEYS[3]) >= tonumber(ARGV[3]) then
  return 'full'
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
keep_alive(ttl, 0)
index_user_room()
if has_user then return 'joined' else return 'first' end
