-- Registers several sockets, in order. ARGV: prefix, then user, socket, node of each socket.
-- Returns, per socket, 1 if its user came online, 0 if the user was online already, -1 if its
-- node holds no live lease (nothing is written for it).
local now = now_ms()
sweep_lapsed(now)
local answers = {}
for i = 2, #ARGV, 3 do
  local user, socket, node = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if lease_live(node, now) then
    local existed = redis.call('ZSCORE', ONLINE, user)
    redis.call('HSET', presence_key(user), socket, node)
    redis.call('HSET', node_sockets_key(node), socket, user)
    redis.call('ZADD', ONLINE, 'inf', user)
    table.insert(answers, existed and 0 or 1)
  else
    table.insert(answers, -1)
  end
end
return answers
