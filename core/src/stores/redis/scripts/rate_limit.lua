-- KEYS: counter. ARGV: limit, window ms. Returns 0 when allowed, else the ms until the window
-- ends.
local hits = redis.call('INCR', KEYS[1])
if hits == 1 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2])) end
if hits <= tonumber(ARGV[1]) then return 0 end
local remaining = redis.call('PTTL', KEYS[1])
if remaining < 0 then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  remaining = tonumber(ARGV[2])
end
return remaining
