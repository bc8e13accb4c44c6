-- KEYS: sockets, owner, users. Returns the user ids with a live membership.
purge(now_ms())
return redis.call('HKEYS', KEYS[3])
