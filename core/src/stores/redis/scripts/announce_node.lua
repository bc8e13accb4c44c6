-- KEYS: node status hash (node -> JSON), node expiry zset (node -> announced until, ms).
-- ARGV: node, status JSON, ttl ms. Records the node and forgets nodes whose announcement ran out.
local now = now_ms()
local ttl = tonumber(ARGV[3])
for _, gone in ipairs(redis.call('ZRANGE', KEYS[2], '-inf', now, 'BYSCORE')) do
  redis.call('HDEL', KEYS[1], gone)
  redis.call('ZREM', KEYS[2], gone)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl * 4)
redis.call('PEXPIRE', KEYS[2], ttl * 4)
return 1
