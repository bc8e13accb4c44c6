-- ARGV: prefix, user. Returns [socket, node, ...] for the user's sockets under live leases.
sweep_lapsed(now_ms())
return redis.call('HGETALL', presence_key(ARGV[2]))
