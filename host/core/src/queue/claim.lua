-- `claim_jobs(K, A, consumers)` gives waiting workers their next jobs, one
-- job per consumer named: the workers of one instance that asked at the same
-- moment share one call (this script's, or settle.lua's after outcomes).
-- Jobs come high before normal before low, except that every A[7]-th claim
-- of the queue tries low first and the one halfway between tries normal
-- first (each falling through to the other classes), so a flood of high jobs
-- delays the lower classes but cannot starve them.
-- First moves retries whose time has come back into their class stream (so any
-- instance may promote them, exactly once). Returns one of:
--   {'paused'}  the queue is paused
--   {'claimed', next retry time in ms or '', {dropped job ids},
--    {stream index (1..3), entry id, consumer, {values}}...}
-- where the jobs (fewer than asked when the queue ran dry) go to the consumers
-- in order, and the values are the job's CLAIMED_FIELDS (below) as this claim
-- left them (a missing one is nil). The rest of what the claim wrote is known
-- to the caller: the job is active, started at A[2], by that consumer. Only
-- the fields a worker runs the job with come back: a claim reply is what a
-- loaded instance parses most. A dropped id was an entry whose job record is
-- gone (evicted, deleted by hand): it was dropped and counted.
-- K[1] paused flag   K[2] delayed zset   K[3..5] high/normal/low streams
-- K[6] counter of dropped entries   K[7] counter of claims
-- A[1] group   A[2] now (ms)   A[3] job key prefix   A[4] event key prefix
-- A[5] event type (started)   A[6] events kept
-- A[7] the fairness period N (0: strict priority)
-- As a script of its own: KEYS are K, ARGV[1..7] are A and ARGV[8..] the
-- consumers (Rust appends that line).
-- (enter_stream.lua and stage_event.lua are prepended.)
-- claiming.rs' CLAIMED_FIELDS, in the same order (a test compares them).
local CLAIMED_FIELDS = {'id', 'queue', 'class', 'score', 'priority', 'user_id', 'user_tier',
  'payload', 'message_session', 'message_id', 'handler', 'handler_version', 'created_at',
  'attempts', 'first_started_at'}
local CLAIMED_QUEUE, CLAIMED_ATTEMPTS, CLAIMED_FIRST_STARTED = 2, 14, 15

local function claim_jobs(K, A, consumers)
  local due = redis.call('ZRANGEBYSCORE', K[2], '-inf', A[2], 'LIMIT', 0, 100)
  for _, id in ipairs(due) do
    redis.call('ZREM', K[2], id)
    enter_stream(A[3] .. id, id, K[3], K[4], K[5])
  end

  if redis.call('EXISTS', K[1]) == 1 then
    return {'paused'}
  end

  local wanted = #consumers
  local jobs, dropped = {}, {}

  -- Starts the job of one read entry for the next consumer in line.
  local function start(stream_index, entry_id, id)
    local job = A[3] .. id
    local fields = redis.call('HMGET', job, unpack(CLAIMED_FIELDS))
    if not fields[1] then
      redis.call('XACK', K[stream_index], A[1], entry_id)
      redis.call('XDEL', K[stream_index], entry_id)
      redis.call('INCR', K[6])
      dropped[#dropped + 1] = id
      return
    end
    local worker = consumers[#jobs + 1]
    local attempt = (tonumber(fields[CLAIMED_ATTEMPTS]) or 0) + 1
    fields[CLAIMED_ATTEMPTS] = attempt
    local changed = {'attempts', attempt, 'state', 'active', 'started_at', A[2],
      'worker', worker, 'entry', entry_id}
    if not fields[CLAIMED_FIRST_STARTED] then
      fields[CLAIMED_FIRST_STARTED] = A[2]
      changed[#changed + 1] = 'first_started_at'
      changed[#changed + 1] = A[2]
    end
    redis.call('HSET', job, unpack(changed))
    -- The kind of task is the queue it was submitted to (design C's `task_type`).
    local started = cjson.encode({attempt = attempt, worker = worker,
      task_type = fields[CLAIMED_QUEUE] or nil})
    redis.call('XADD', A[4] .. id, 'MAXLEN', '~', A[6], '*', 'event_type', A[5],
      'data', started, 'timestamp', A[2])
    copy_to_root(A[4] .. id, id, A[6],
      'event_type', A[5], 'data', started, 'timestamp', A[2])
    jobs[#jobs + 1] = {stream_index - 2, entry_id, worker, fields}
  end

  -- Claims up to `count` jobs, trying the streams in `order`.
  local function claim(count, order)
    local goal = #jobs + count
    for _, i in ipairs(order) do
      -- Dropped entries do not count, so a stream is read until it is dry or
      -- the goal is met.
      while #jobs < goal do
        local asked = goal - #jobs
        local read = redis.call('XREADGROUP', 'GROUP', A[1], consumers[#jobs + 1],
          'COUNT', asked, 'STREAMS', K[i], '>')
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

  local every = tonumber(A[7])
  if every > 0 then
    -- Which of this call's claims are the fairness turns.
    local before = tonumber(redis.call('GET', K[7]) or '0')
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
    redis.call('INCRBY', K[7], #jobs)
  end

  local next_due = ''
  if #jobs < wanted then
    next_due = redis.call('ZRANGE', K[2], 0, 0, 'WITHSCORES')[2] or ''
  end
  local reply = {'claimed', next_due, dropped}
  for _, job in ipairs(jobs) do
    reply[#reply + 1] = job
  end
  return reply
end
