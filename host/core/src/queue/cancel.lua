-- Cancels a job. A waiting or delayed job is taken out of line at once. An
-- active one gets a cancel flag, and its instance is told on the cancel channel
-- so the running guest is stopped at once (its heartbeat also sees the flag,
-- should the message be lost). From then on the job can only end cancelled:
-- finish.lua refuses any other outcome and recovery does not restart it.
-- A cancelled waiting or delayed job's session message ends in an error here.
-- A cancelled waiting or delayed job counts as a cancelled request in the
-- queue's monitoring (monitor.lua, prepended with message_end.lua).
-- Returns {the job's state before the call, its queue, its class}, or false
-- when there is no such job in the queue named.
-- KEYS[1] job hash   KEYS[2] job event stream   KEYS[3] job state hash
-- KEYS[4..6] the queue's high/normal/low streams   KEYS[7] its delayed zset
-- ARGV[1] now (ms)   ARGV[2] ttl in seconds   ARGV[3] queue name
-- ARGV[4] event type (cancelled)   ARGV[5] events kept   ARGV[6] cancel channel
-- ARGV[7] message ttl (s)   ARGV[8] message events kept
-- ARGV[9] the queue's monitoring key prefix
-- ARGV[10] the queue's sessions prefix (see message_end.lua)
local job = redis.call('HMGET', KEYS[1], 'state', 'queue', 'class', 'entry', 'id')
local state = job[1]
if not state or job[2] ~= ARGV[3] then
  return false
end
local streams = {high = KEYS[4], normal = KEYS[5], low = KEYS[6]}
if state == 'waiting' or state == 'delayed' then
  if state == 'waiting' then
    redis.call('XDEL', streams[job[3]], job[4])
  else
    redis.call('ZREM', KEYS[7], job[5])
  end
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at', ARGV[1], 'error', 'cancelled by request')
  local cancelled = cjson.encode({previous_state = state})
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'event_type', ARGV[4],
    'data', cancelled, 'timestamp', ARGV[1])
  copy_to_root(KEYS[2], job[5], ARGV[5],
    'event_type', ARGV[4], 'data', cancelled, 'timestamp', ARGV[1])
  -- The guest's state (a delayed job ran before) expires with the record, as
  -- finish.lua does.
  for _, key in ipairs({KEYS[1], KEYS[2], KEYS[3]}) do
    redis.call('EXPIRE', key, ARGV[2])
  end
  local message, message_stream = driven_message(ARGV[10], KEYS[1], job[5])
  if message then
    end_message(message, message_stream, 'error', 'the job was cancelled', ARGV[1], ARGV[7], ARGV[8])
  end
  monitor_request(ARGV[9], 'cancelled')
  monitor_flush()
elseif state == 'active' then
  redis.call('HSET', KEYS[1], 'cancel', ARGV[1], 'cancel_requested_at', ARGV[1])
  publish(ARGV[6], job[5])
end
return {state, job[2], job[3]}
