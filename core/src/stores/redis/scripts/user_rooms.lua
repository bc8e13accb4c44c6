-- ARGV: prefix, user. Returns the rooms where the user holds a live membership.
sweep_lapsed(now_ms())
return redis.call('SMEMBERS', user_rooms_key(ARGV[2]))
