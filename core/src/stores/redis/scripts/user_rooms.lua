-- KEYS: the user's rooms (room -> until when a membership there is known to live). Drops the
-- entries that ran out and returns the rooms left.
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], now, '+inf', 'BYSCORE')
