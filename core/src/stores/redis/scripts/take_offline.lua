-- ARGV: prefix, batch size. Removes and returns users with no socket whose linger passed (those
-- of a lapsed node at once). Atomic: each user is returned once. The first element of the
-- answer is '1' while lapsed nodes remain to be swept (the caller calls again), else '0'.
local now = now_ms()
local swept = sweep_lapsed(now)
local answer = { swept and '0' or '1' }
for _, user in ipairs(redis.call('ZRANGE', ONLINE, '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))) do
  if redis.call('HLEN', presence_key(user)) == 0 then
    redis.call('ZREM', ONLINE, user)
    table.insert(answer, user)
  else
    redis.call('ZADD', ONLINE, 'inf', user)
  end
end
return answer
