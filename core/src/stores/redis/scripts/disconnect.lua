-- ARGV: prefix, user, socket, node, linger ms. Removes the socket; after the user's last one the
-- user stays online for the linger.
remove_socket(ARGV[2], ARGV[3], ARGV[4], now_ms() + tonumber(ARGV[5]))
return 1
