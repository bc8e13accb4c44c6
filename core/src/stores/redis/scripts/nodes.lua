-- KEYS: node status hash, node expiry zset. Returns the status JSON of every node whose
-- announcement has not run out.
local now = now_ms()
local live = redis.call('ZRANGE', KEYS[2], '(' .. now, '+inf', 'BYSCORE')
local statuses = {}
for _, node in ipairs(live) do
  local status = redis.call('HGET', KEYS[1], node)
  if status then table.insert(statuses, status) end
end
return statuses
