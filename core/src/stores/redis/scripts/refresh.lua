-- Refreshes several memberships. KEYS: sockets, owner, users of each membership's room. ARGV:
-- socket, ttl ms of each membership. Extends live memberships only, and returns the (1-based)
-- positions of those that were gone (expired, or lost with Redis's data).
local now = now_ms()
local gone = {}
for i = 1, #ARGV / 2 do
  local socket, ttl = ARGV[2 * i - 1], tonumber(ARGV[2 * i])
  local base = (i - 1) * 3
  local expires = redis.call('ZSCORE', KEYS[base + 1], socket)
  if expires and tonumber(expires) > now then
    redis.call('ZADD', KEYS[base + 1], now + ttl, socket)
    keep_alive(ttl, base)
  else
    table.insert(gone, i)
  end
end
return gone
