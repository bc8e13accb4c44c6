-- ARGV: prefix, user, socket, node, linger ms. Removes the socket; after the user's last one the
-- user stays online for the linger. Lapsed nodes are swept first, so a user whose other sockets
-- died with their node lingers from this disconnect, as on a store that notices lapses at once.
local now = now_ms()
sweep_lapsed(now)
remove_socket(ARGV[2], ARGV[3], ARGV[4], now + tonumber(ARGV[5]))
return 1
