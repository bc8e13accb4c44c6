-- ARGV: prefix. Returns the status JSON of every node whose lease is live.
local now = now_ms()
local statuses = {}
for _, node in ipairs(redis.call('ZRANGE', LEASES, '(' .. now, '+inf', 'BYSCORE')) do
  local status = redis.call('HGET', STATUSES, node)
  if status then table.insert(statuses, status) end
end
return statuses
