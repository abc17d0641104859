-- Gives waiting workers their next jobs, one job per consumer named in
-- ARGV[8..]: the workers of one instance that asked at the same moment share
-- this call. Jobs come high before normal before low, except that every
-- ARGV[7]-th claim of the queue tries low first and the one halfway between
-- tries normal first (each falling through to the other classes), so a flood of
-- high jobs delays the lower classes but cannot starve them.
-- First moves retries whose time has come back into their class stream (so any
-- instance may promote them, exactly once). Returns one of:
--   {'paused'}  the queue is paused
--   {'claimed', next retry time in ms or '', {dropped job ids},
--    {stream index (1..3), entry id, job fields}...}
-- where the jobs (fewer than asked when the queue ran dry) go to the consumers
-- in order, and their fields are the job hash followed by what this claim
-- changed (a later pair wins). A dropped id was an entry whose job record is
-- gone (evicted, deleted by hand): it was dropped and counted.
-- KEYS[1] paused flag   KEYS[2] delayed zset   KEYS[3..5] high/normal/low streams
-- KEYS[6] counter of dropped entries   KEYS[7] counter of claims
-- ARGV[1] group   ARGV[2] now (ms)   ARGV[3] job key prefix   ARGV[4] event key prefix
-- ARGV[5] event type (started)   ARGV[6] events kept
-- ARGV[7] the fairness period N (0: strict priority)   ARGV[8..] consumers
-- (enter_stream.lua and stage_event.lua are prepended.)
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, 100)
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[2], id)
  enter_stream(ARGV[3] .. id, id, KEYS[3], KEYS[4], KEYS[5])
end

if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'paused'}
end

local consumers = {unpack(ARGV, 8)}
local wanted = #consumers
local jobs, dropped = {}, {}

-- Starts the job of one read entry for the next consumer in line.
local function start(stream_index, entry_id, id)
  local job = ARGV[3] .. id
  local fields = redis.call('HGETALL', job)
  if #fields == 0 then
    redis.call('XACK', KEYS[stream_index], ARGV[1], entry_id)
    redis.call('XDEL', KEYS[stream_index], entry_id)
    redis.call('INCR', KEYS[6])
    dropped[#dropped + 1] = id
    return
  end
  local worker = consumers[#jobs + 1]
  local attempt = redis.call('HINCRBY', job, 'attempts', 1)
  local record, queue, first_started = {}, nil, nil
  for i = 1, #fields, 2 do
    if fields[i] == 'queue' then queue = fields[i + 1] end
    if fields[i] == 'first_started_at' then first_started = fields[i + 1] end
  end
  local changed = {'attempts', attempt, 'state', 'active', 'started_at', ARGV[2],
    'worker', worker, 'entry', entry_id}
  if not first_started then
    changed[#changed + 1] = 'first_started_at'
    changed[#changed + 1] = ARGV[2]
  end
  redis.call('HSET', job, unpack(changed, 3))
  for _, value in ipairs(changed) do
    fields[#fields + 1] = value
  end
  -- The kind of task is the queue it was submitted to (design C's `task_type`).
  local started = cjson.encode({attempt = attempt, worker = worker, task_type = queue})
  redis.call('XADD', ARGV[4] .. id, 'MAXLEN', '~', ARGV[6], '*', 'event_type', ARGV[5],
    'data', started, 'timestamp', ARGV[2])
  copy_to_root(ARGV[4] .. id, id, ARGV[6],
    'event_type', ARGV[5], 'data', started, 'timestamp', ARGV[2])
  jobs[#jobs + 1] = {stream_index - 2, entry_id, fields}
end

-- Claims up to `count` jobs, trying the streams in `order`.
local function claim(count, order)
  local goal = #jobs + count
  for _, i in ipairs(order) do
    -- Dropped entries do not count, so a stream is read until it is dry or
    -- the goal is met.
    while #jobs < goal do
      local asked = goal - #jobs
      local read = redis.call('XREADGROUP', 'GROUP', ARGV[1], consumers[#jobs + 1],
        'COUNT', asked, 'STREAMS', KEYS[i], '>')
      local entries = read and read[1][2] or {}
      for _, entry in ipairs(entries) do
        start(i, entry[1], entry[2][2])
      end
      if #entries < asked then
        break
      end
    end
  end
end

local every = tonumber(ARGV[7])
if every > 0 then
  -- Which of this call's claims are the fairness turns.
  local before = tonumber(redis.call('GET', KEYS[7]) or '0')
  local low_first, normal_first = 0, 0
  for n = 1, wanted do
    local turn = (before + n) % every
    if turn == 0 then
      low_first = low_first + 1
    elseif turn == math.floor(every / 2) then
      normal_first = normal_first + 1
    end
  end
  claim(low_first, {5, 4, 3})
  claim(normal_first, {4, 3, 5})
end
claim(wanted - #jobs, {3, 4, 5})
if #jobs > 0 then
  redis.call('INCRBY', KEYS[7], #jobs)
end

local next_due = ''
if #jobs < wanted then
  next_due = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2] or ''
end
local reply = {'claimed', next_due, dropped}
for _, job in ipairs(jobs) do
  reply[#reply + 1] = job
end
return reply
