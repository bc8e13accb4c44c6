-- ARGV: prefix, room, socket. Returns 'last', 'left' or 'none'.
sweep_lapsed(now_ms())
return remove_membership(ARGV[2], ARGV[3])
