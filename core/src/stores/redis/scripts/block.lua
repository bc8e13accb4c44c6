-- KEYS: the room's blocked hash (user -> blocked until, ms). ARGV: user, block ms.
-- Blocks the user's joins until now + ms; the hash lives as long as its longest block.
local now = now_ms()
local until_ms = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', until_ms))
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 1
