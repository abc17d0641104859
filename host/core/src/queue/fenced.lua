-- One write of a running attempt to its own job, applied only while the
-- attempt holds the job's fence: an event, its progress (field and event), or
-- a key of the guest's state. Returns 1 when written, 0 when fenced off, 2 when
-- refused because the job's cancel was accepted.
-- KEYS[1] job hash   KEYS[2] fenced-write counter   KEYS[3] job event stream
-- KEYS[4] job state hash
-- ARGV[1] fence token   ARGV[2] operation: 'event', 'progress', 'state_set', 'state_delete'
-- event and progress: ARGV[3] event type   ARGV[4] data   ARGV[5] now (ms)
--   ARGV[6] events kept   ARGV[7] job id (named by the caller, which knows
--   it, rather than read back from the job hash); progress also ARGV[8]
--   percent   ARGV[9] step
-- state_set: ARGV[3] key   ARGV[4] value;   state_delete: ARGV[3] key
local refusal = fence_refusal(KEYS[1], ARGV[1], KEYS[2])
if refusal == 'fenced' then
  return 0
elseif refusal == 'cancelled' then
  return 2
end
local operation = ARGV[2]
if operation == 'state_set' then
  redis.call('HSET', KEYS[4], ARGV[3], ARGV[4])
elseif operation == 'state_delete' then
  redis.call('HDEL', KEYS[4], ARGV[3])
else
  if operation == 'progress' then
    redis.call('HSET', KEYS[1], 'progress', ARGV[8], 'step', ARGV[9])
  end
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*',
    'event_type', ARGV[3], 'data', ARGV[4], 'timestamp', ARGV[5])
  copy_to_root(KEYS[3], ARGV[7], ARGV[6],
    'event_type', ARGV[3], 'data', ARGV[4], 'timestamp', ARGV[5])
end
return 1
