-- Renews a node's lease and records its status. ARGV: prefix, node, status JSON, ttl ms, the
-- token of the announcing process. Returns 'held' when the lease was live and held by this
-- process, else 'granted': then nothing the node registered before is held (a lapsed lease, or
-- the lease of an earlier process under the same node id, is swept first), and the node
-- registers its sockets and memberships again.
local now = now_ms()
local node, token = ARGV[2], ARGV[5]
local held = lease_live(node, now) and redis.call('HGET', TOKENS, node) == token
sweep_lapsed(now)
-- What an earlier lease of this node registered goes before the new lease is granted; a large
-- node takes a few calls ('sweeping': the store calls again).
if not held and sweep_node(node, now, SWEEP_BUDGET) < 0 then return 'sweeping' end
redis.call('HSET', STATUSES, node, ARGV[3])
redis.call('HSET', TOKENS, node, token)
redis.call('ZADD', LEASES, now + tonumber(ARGV[4]), node)
if held then return 'held' end
return 'granted'
