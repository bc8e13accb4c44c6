-- ARGV: prefix, batch size. Removes and returns users with no socket whose linger passed (those
-- of a lapsed node at once). Atomic: each user is returned once.
local now = now_ms()
sweep_lapsed(now)
local gone = {}
for _, user in ipairs(redis.call('ZRANGE', ONLINE, '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))) do
  if redis.call('HLEN', presence_key(user)) == 0 then
    redis.call('ZREM', ONLINE, user)
    table.insert(gone, user)
  else
    redis.call('ZADD', ONLINE, 'inf', user)
  end
end
return gone
