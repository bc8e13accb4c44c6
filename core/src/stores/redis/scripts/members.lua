-- ARGV: prefix, room. Returns the user ids with a live membership.
sweep_lapsed(now_ms())
return redis.call('HKEYS', room_key(ARGV[2], 'users'))
