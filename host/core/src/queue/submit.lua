-- Enqueues one job atomically: its hash, its stream entry, its first event, and a
-- wake-up for idle workers. Refuses when the stream is full (returns false) or
-- the id is taken (returns 'duplicate': a follow-up job handed on twice). A
-- follow-up job is queued only while the attempt that asks for it holds its
-- own job's fence, and one that takes its parent's session message takes it
-- in the same step, only if the parent still drives it (else: 'fenced'). Once
-- the parent's cancel was accepted, nothing is queued ('cancelled').
-- KEYS[1] class stream   KEYS[2] job hash   KEYS[3] job event stream
-- KEYS[4] the parent job's hash   KEYS[5] the parent queue's fenced-write counter
-- ARGV[1] max waiting   ARGV[2] job id   ARGV[3] now (ms)   ARGV[4] event data
-- ARGV[5] wake channel  ARGV[6] queue name   ARGV[7] event type   ARGV[8] events kept
-- ARGV[9] the parent attempt's fence token ('' for a job with no parent)
-- ARGV[10] the parent job's id
-- ARGV[11] the id of the parent's session message the job takes ('' for none;
--          its key is the store's `message:{id}` after ARGV[12])
-- ARGV[12] the queue's sessions prefix (see message_end.lua)
-- ARGV[13..] job hash field/value pairs
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 'duplicate'
end
if ARGV[9] ~= '' then
  -- A job that moved on, or whose cancel was accepted, queues nothing.
  local refusal = fence_refusal(KEYS[4], ARGV[9], KEYS[5])
  if refusal then
    return refusal
  end
end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then
  return false
end
if ARGV[11] ~= '' then
  local message = ARGV[12] .. 'message:' .. ARGV[11]
  if redis.call('HGET', message, 'job_id') ~= ARGV[10] then
    return 'fenced'
  end
  redis.call('HSET', message, 'job_id', ARGV[2])
end
local entry = redis.call('XADD', KEYS[1], '*', 'job', ARGV[2])
redis.call('HSET', KEYS[2], 'entry', entry, unpack(ARGV, 13))
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '*',
  'event_type', ARGV[7], 'data', ARGV[4], 'timestamp', ARGV[3])
copy_to_root(KEYS[3], ARGV[2], ARGV[8],
  'event_type', ARGV[7], 'data', ARGV[4], 'timestamp', ARGV[3])
publish(ARGV[5], ARGV[6])
return entry
