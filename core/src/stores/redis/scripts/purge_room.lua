-- Removes expired memberships of one room (KEYS: sockets zset, owner hash, users hash), and
-- keeps a room's three keys (from KEYS[base + 1]) alive.
local function purge(now)
  local expired = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE')
  for _, socket in ipairs(expired) do
    local user = redis.call('HGET', KEYS[2], socket)
    redis.call('ZREM', KEYS[1], socket)
    redis.call('HDEL', KEYS[2], socket)
    if user and redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then
      redis.call('HDEL', KEYS[3], user)
    end
  end
end
local function keep_alive(ttl, base)
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[base + i], ttl * 2) end
end
