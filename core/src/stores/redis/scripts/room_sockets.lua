-- ARGV: prefix, room. Returns [socket, user, node, ...] for the room's live memberships.
sweep_lapsed(now_ms())
local owners = redis.call('HGETALL', room_key(ARGV[2], 'owner'))
local listed = {}
for i = 1, #owners, 2 do
  table.insert(listed, owners[i])
  table.insert(listed, owners[i + 1])
  table.insert(listed, redis.call('HGET', room_key(ARGV[2], 'node'), owners[i]) or '')
end
return listed
