-- Enqueues one job atomically: its hash, its stream entry, its first event, and a
-- wake-up for idle workers. Refuses when the stream is full (returns false) or
-- the id is taken (returns 'duplicate': a follow-up job handed on twice).
-- KEYS[1] class stream   KEYS[2] job hash   KEYS[3] job event stream
-- ARGV[1] max waiting   ARGV[2] job id   ARGV[3] now (ms)   ARGV[4] event data
-- ARGV[5] wake channel  ARGV[6] queue name   ARGV[7] event type   ARGV[8] events kept
-- ARGV[9..] job hash field/value pairs
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 'duplicate'
end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then
  return false
end
redis.call('HSET', KEYS[2], unpack(ARGV, 9))
local entry = redis.call('XADD', KEYS[1], '*', 'job', ARGV[2])
redis.call('HSET', KEYS[2], 'entry', entry)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '*',
  'event_type', ARGV[7], 'data', ARGV[4], 'timestamp', ARGV[3])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return entry
