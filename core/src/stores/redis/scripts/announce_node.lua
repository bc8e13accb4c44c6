-- Renews a node's lease and records its status. ARGV: prefix, node, status JSON, ttl ms.
-- Returns 'held' when the lease was live, else 'granted': then nothing the node registered
-- before is held (a lapsed lease is swept first), and it registers its sockets and memberships
-- again.
local now = now_ms()
local node = ARGV[2]
local held = lease_live(node, now)
sweep_lapsed(now)
if not held then sweep_node(node, now) end
redis.call('HSET', STATUSES, node, ARGV[3])
redis.call('ZADD', LEASES, now + tonumber(ARGV[4]), node)
if held then return 'held' end
return 'granted'
