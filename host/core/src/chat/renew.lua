-- Renews a relay lease if this instance still holds it: 1, else 0.
-- KEYS[1] relay lease   ARGV[1] lease holder   ARGV[2] lease ms
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
