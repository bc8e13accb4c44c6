-- Refreshes several memberships. KEYS: sockets, owner, users of each membership's room, and the
-- rooms of its user. ARGV: socket, ttl ms, room of each membership. Extends live memberships
-- only, and returns the (1-based) positions of those that were gone (expired, or lost with
-- Redis's data).
local now = now_ms()
local gone = {}
for i = 1, #ARGV / 3 do
  local socket, ttl, room = ARGV[3 * i - 2], tonumber(ARGV[3 * i - 1]), ARGV[3 * i]
  local base = (i - 1) * 4
  local expires = redis.call('ZSCORE', KEYS[base + 1], socket)
  if expires and tonumber(expires) > now then
    redis.call('ZADD', KEYS[base + 1], now + ttl, socket)
    keep_alive(ttl, base)
    redis.call('ZADD', KEYS[base + 4], 'GT', now + ttl, room)
    redis.call('PEXPIRE', KEYS[base + 4], ttl * 2)
  else
    table.insert(gone, i)
  end
end
return gone
