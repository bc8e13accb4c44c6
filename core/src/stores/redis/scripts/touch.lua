-- Connects and heartbeats of several sockets, in order. KEYS: expiry zset, then the user hash
-- of each socket. ARGV: user, socket, node, ttl ms of each socket. Returns, per socket, 1 if its
-- user came online, else 0.
local now = now_ms()
local arrivals = {}
for i = 2, #KEYS do
  local args_before = (i - 2) * 4
  local user, socket, node = ARGV[args_before + 1], ARGV[args_before + 2], ARGV[args_before + 3]
  local ttl = tonumber(ARGV[args_before + 4])
  local expires = now + ttl
  local existed = redis.call('ZSCORE', KEYS[1], user)
  redis.call('HSET', KEYS[i], socket, string.format('%d', expires) .. '|' .. node)
  redis.call('PEXPIRE', KEYS[i], ttl * 2)
  redis.call('ZADD', KEYS[1], 'GT', expires, user)
  arrivals[i - 1] = existed and 0 or 1
end
return arrivals
