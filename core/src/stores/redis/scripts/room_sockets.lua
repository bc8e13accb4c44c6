-- KEYS: sockets, owner, users. Returns [socket, user, expires ms, ...] for live memberships.
purge(now_ms())
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local listed = {}
for i = 1, #entries, 2 do
  local user = redis.call('HGET', KEYS[2], entries[i])
  if user then
    table.insert(listed, entries[i])
    table.insert(listed, user)
    table.insert(listed, entries[i + 1])
  end
end
return listed
