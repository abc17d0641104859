-- Gives one worker its next job: high before normal before low, except that
-- every ARGV[8]-th claim of the queue tries low first and the one halfway
-- between tries normal first (each falling through to the other classes), so
-- a flood of high jobs delays the lower classes but cannot starve them.
-- First moves retries whose time has come back into their class stream (so any
-- instance may promote them, exactly once). Returns one of:
--   {'job', stream index (1..3), entry id, job hash as field/value list}
--   {'paused'}  the queue is paused
--   {'dropped', job id}  an entry pointed at a job whose record is gone (evicted,
--               deleted by hand): it was dropped and counted; call again
--   {'idle', next retry time in ms or ''}
-- KEYS[1] paused flag   KEYS[2] delayed zset   KEYS[3..5] high/normal/low streams
-- KEYS[6] counter of dropped entries   KEYS[7] counter of claims
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] now (ms)   ARGV[4] job key prefix
-- ARGV[5] event key prefix   ARGV[6] event type (started)   ARGV[7] events kept
-- ARGV[8] the fairness period N (0: strict priority)
-- (enter_stream.lua and stage_event.lua are prepended.)
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'LIMIT', 0, 100)
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[2], id)
  enter_stream(ARGV[4] .. id, id, KEYS[3], KEYS[4], KEYS[5])
end

if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'paused'}
end

local order = {3, 4, 5}
local every = tonumber(ARGV[8])
if every > 0 then
  local turn = (tonumber(redis.call('GET', KEYS[7]) or '0') + 1) % every
  if turn == 0 then
    order = {5, 4, 3}
  elseif turn == math.floor(every / 2) then
    order = {4, 3, 5}
  end
end

for _, i in ipairs(order) do
  local read = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', KEYS[i], '>')
  if read then
    local entry = read[1][2][1]
    local entry_id, id = entry[1], entry[2][2]
    local job = ARGV[4] .. id
    if redis.call('EXISTS', job) == 0 then
      redis.call('XACK', KEYS[i], ARGV[1], entry_id)
      redis.call('XDEL', KEYS[i], entry_id)
      redis.call('INCR', KEYS[6])
      return {'dropped', id}
    end
    redis.call('INCR', KEYS[7])
    local attempt = redis.call('HINCRBY', job, 'attempts', 1)
    redis.call('HSET', job, 'state', 'active', 'started_at', ARGV[3], 'worker', ARGV[2], 'entry', entry_id)
    redis.call('HSETNX', job, 'first_started_at', ARGV[3])
    -- The kind of task is the queue it was submitted to (design C's `task_type`).
    local started = cjson.encode({attempt = attempt, worker = ARGV[2],
      task_type = redis.call('HGET', job, 'queue')})
    redis.call('XADD', ARGV[5] .. id, 'MAXLEN', '~', ARGV[7], '*', 'event_type', ARGV[6],
      'data', started, 'timestamp', ARGV[3])
    copy_to_root(ARGV[5] .. id, id, ARGV[7],
      'event_type', ARGV[6], 'data', started, 'timestamp', ARGV[3])
    return {'job', i - 2, entry_id, redis.call('HGETALL', job)}
  end
end

local next_due = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return {'idle', next_due[2] or ''}
