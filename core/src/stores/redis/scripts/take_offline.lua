-- KEYS: expiry zset. ARGV: user hash key prefix, batch size. Removes and returns users whose
-- online-until passed and who have no live socket. Atomic: each user is returned once.
local now = now_ms()
local users = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
local gone = {}
for _, user in ipairs(users) do
  local key = ARGV[1] .. user
  local entries = redis.call('HGETALL', key)
  local latest = 0
  for i = 2, #entries, 2 do
    local expires = tonumber(string.match(entries[i], '^(%d+)|'))
    if expires and expires > latest then latest = expires end
  end
  if latest > now then
    redis.call('ZADD', KEYS[1], latest, user)
  else
    redis.call('ZREM', KEYS[1], user)
    redis.call('DEL', key)
    table.insert(gone, user)
  end
end
return gone
