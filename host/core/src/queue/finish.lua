-- Records the end of one attempt and acknowledges its stream entry, atomically.
-- Only the attempt that currently owns the job may finish it, so a job that ran
-- twice (its first worker presumed dead) gets one result and one final event.
-- A job that fails for good is also appended to the queue's dead-letter stream,
-- with a snapshot of its record so that it can be replayed after the record
-- itself has expired. Once a cancel was accepted only `cancelled` is recorded.
-- The session message the job drives (if it still does) ends in the same step:
-- completed, in an error, or, for a retry, with its running tasks failed.
-- Returns 1 when recorded, 0 when the attempt had lost the job, 2 when the job
-- must be recorded as cancelled instead (nothing was written).
-- KEYS[1] job hash   KEYS[2] stream   KEYS[3] job event stream   KEYS[4] job state hash
-- KEYS[5] outcome zset (history, or delayed retries)   KEYS[6] outcome counter
-- KEYS[7] attempt history list   KEYS[8] dead-letter stream   KEYS[9] its index
-- ARGV[1] group   ARGV[2] entry id   ARGV[3] job id   ARGV[4] now (ms)
-- ARGV[5] new state   ARGV[6] zset score   ARGV[7] history length (ids kept; unused when delayed)
-- ARGV[8] ttl in seconds (0: keep)   ARGV[9] event type   ARGV[10] event data
-- ARGV[11] attempt record (JSON)   ARGV[12] events kept
-- ARGV[13] message ending ('completed', 'error', 'retrying')   ARGV[14] message error
-- ARGV[15] message ttl (s)   ARGV[16] message events kept   ARGV[17] dead letters kept
-- ARGV[18] monitoring key prefix   ARGV[19..] job hash field/value pairs
-- (message_end.lua, dead_letters.lua, monitor.lua and stage_event.lua are prepended.)
local owner = redis.call('HMGET', KEYS[1], 'state', 'entry', 'cancel')
if owner[1] ~= 'active' or owner[2] ~= ARGV[2] then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[2], ARGV[2])
  return 0
end
if owner[3] and ARGV[5] ~= 'cancelled' then
  return 2
end
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[1], 'state', ARGV[5], 'finished_at', ARGV[4], unpack(ARGV, 19))
redis.call('HDEL', KEYS[1], 'cancel')
redis.call('RPUSH', KEYS[7], ARGV[11])
if ARGV[5] == 'delayed' then
  redis.call('ZADD', KEYS[5], ARGV[6], ARGV[3])
else
  -- A history keeps the last ARGV[7] ids (none at 0); the total counts them all.
  local history = tonumber(ARGV[7])
  if history > 0 then
    redis.call('ZADD', KEYS[5], ARGV[6], ARGV[3])
    redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -(history + 1))
  end
  redis.call('INCR', KEYS[6])
end
if ARGV[5] ~= 'delayed' then
  -- The request ended (a retry is not an end).
  local times = redis.call('HMGET', KEYS[1], 'created_at', 'started_at')
  monitor_request(ARGV[18], ARGV[5], times[1], times[2], ARGV[4])
end
if ARGV[5] == 'failed' then
  local snapshot = cjson.encode(redis.call('HGETALL', KEYS[1]))
  add_dead_letter(KEYS[8], KEYS[9], ARGV[3], ARGV[4], snapshot, ARGV[17])
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[12], '*',
  'event_type', ARGV[9], 'data', ARGV[10], 'timestamp', ARGV[4])
copy_to_root(KEYS[3], ARGV[3], ARGV[12],
  'event_type', ARGV[9], 'data', ARGV[10], 'timestamp', ARGV[4])
local message, message_stream = driven_message(KEYS[1], ARGV[3])
if message then
  end_message(message, message_stream, ARGV[13], ARGV[14], ARGV[4], ARGV[15], ARGV[16])
end
local ttl = tonumber(ARGV[8])
if ttl > 0 then
  for _, key in ipairs({KEYS[1], KEYS[3], KEYS[4], KEYS[7]}) do
    redis.call('EXPIRE', key, ttl)
  end
end
return 1
