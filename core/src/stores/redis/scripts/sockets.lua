-- KEYS: user hash. Returns [socket, node, ...] for live sockets.
local now = now_ms()
local entries = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #entries, 2 do
  local expires, node = string.match(entries[i + 1], '^(%d+)|(.*)$')
  if expires and tonumber(expires) > now then
    table.insert(live, entries[i])
    table.insert(live, node)
  end
end
return live
