-- Writes of a running attempt to its own job, in order, applied only while the
-- attempt holds the job's fence: events, its progress (field and event), keys
-- of the guest's state. A batch is written whole or not at all; a refused one
-- counts each of its writes. Returns 1 when written, 0 when fenced off, 2 when
-- refused because the job's cancel was accepted.
-- KEYS[1] job hash   KEYS[2] fenced-write counter   KEYS[3] job event stream
-- KEYS[4] job state hash
-- ARGV[1] fence token   ARGV[2] now (ms)   ARGV[3] events kept
-- ARGV[4] job id (named by the caller, which knows it, rather than read back
--   from the job hash)   ARGV[5] the number of writes
-- ARGV[6..] the writes, each an operation and its arguments:
--   'event' event type, data
--   'progress' event type, data, percent, step
--   'state_set' key, value
--   'state_delete' key
local refusal = fence_refusal(KEYS[1], ARGV[1], KEYS[2], tonumber(ARGV[5]))
if refusal == 'fenced' then
  return 0
elseif refusal == 'cancelled' then
  return 2
end
local function event(event_type, data)
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*',
    'event_type', event_type, 'data', data, 'timestamp', ARGV[2])
  copy_to_root(KEYS[3], ARGV[4], ARGV[3],
    'event_type', event_type, 'data', data, 'timestamp', ARGV[2])
end
local at = 6
for _ = 1, tonumber(ARGV[5]) do
  local operation = ARGV[at]
  if operation == 'event' then
    event(ARGV[at + 1], ARGV[at + 2])
    at = at + 3
  elseif operation == 'progress' then
    redis.call('HSET', KEYS[1], 'progress', ARGV[at + 3], 'step', ARGV[at + 4])
    event(ARGV[at + 1], ARGV[at + 2])
    at = at + 5
  elseif operation == 'state_set' then
    redis.call('HSET', KEYS[4], ARGV[at + 1], ARGV[at + 2])
    at = at + 3
  elseif operation == 'state_delete' then
    redis.call('HDEL', KEYS[4], ARGV[at + 1])
    at = at + 2
  else
    return redis.error_reply('unknown fenced write ' .. tostring(operation))
  end
end
return 1
