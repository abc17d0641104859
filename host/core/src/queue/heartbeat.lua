-- Keeps a running job's entry from looking abandoned, and tells its worker
-- whether to go on. Returns 'run', 'cancel' (a client asked to cancel it) or
-- 'lost' (recovery gave the job to another attempt).
-- KEYS[1] stream   KEYS[2] job hash
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] entry id
local job = redis.call('HMGET', KEYS[2], 'state', 'entry', 'cancel')
if job[1] ~= 'active' or job[2] ~= ARGV[3] then
  return 'lost'
end
-- Claiming an entry one already owns resets its idle time.
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
if job[3] then
  return 'cancel'
end
return 'run'
