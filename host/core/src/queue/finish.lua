-- Records the end of attempts and acknowledges their stream entries: a batch
-- of outcomes (those that were ready together on one instance) in one call,
-- each as if it were alone. Only the attempt that currently owns a job may
-- finish it, so a job that ran twice (its first worker presumed dead) gets one
-- result and one final event. A job that fails for good is also appended to
-- the queue's dead-letter stream, with a snapshot of its record so that it can
-- be replayed after the record itself has expired. Once a cancel was accepted
-- only `cancelled` is recorded. The session message the job drives (if it
-- still does) ends in the same step: completed, in an error, or, for a retry,
-- with its running tasks failed.
-- An attempt that did not complete leaves its record in the job hash, as
-- `attempt:N` (N counted by `attempt_records`, which a replay does not
-- reset), so it expires with the job and costs no key of its own. A
-- completing attempt writes none (A[11] is empty): the record's own fields
-- are its account, and a record's value over 64 bytes would turn a small
-- job's compact hash into a table.
-- What every outcome of the batch does alike is done once after them all:
-- one XACK and one XDEL per stream, one INCRBY per counter, one trim per
-- history; the Redis calls per outcome are what makes a loaded queue's cost.
-- Returns one result per outcome, in order: 1 when recorded, 0 when the
-- attempt had lost the job, 2 when the job must be recorded as cancelled
-- instead (nothing was written for it), or the error that stopped it.
-- `finish_outcomes` records them (below); as a script of its own, KEYS and
-- ARGV are its keys and arguments from the first (Rust appends that line).
-- The writes the attempt made that were still pending when it ended (see
-- job_writes.lua) are applied first, under the same check as fenced.lua's:
-- an attempt that lost its job has them refused and counted, and none lands
-- once a cancel was accepted. So an attempt's last writes cost no call of
-- their own, and still precede its last event.
-- Nine keys per outcome, outcome after outcome:
--   1 job hash   2 stream   3 job event stream   4 job state hash
--   5 outcome zset (history, or delayed retries)   6 outcome counter
--   7 dead-letter stream   8 its index   9 fenced-write counter
-- Arguments: the number of outcomes, then per outcome its argument count and:
--   1 group   2 entry id   3 job id   4 now (ms)
--   5 new state   6 zset score   7 history length (ids kept; unused when delayed)
--   8 ttl in seconds (0: keep)   9 event type   10 event data
--   11 attempt record (JSON; empty when it completed)   12 events kept
--   13 message ending ('completed', 'error', 'retrying')   14 message error
--   15 message ttl (s)   16 message events kept   17 dead letters kept
--   18 monitoring key prefix   19 the queue's sessions prefix (see message_end.lua)
--   20 '1' when the job's state hash may exist: this attempt wrote state,
--      or an earlier one ran ('0' spares a loaded queue an EXPIRE per job;
--      a job with an attempt record, retried or replayed, expires it anyway)
--   21 the number of pending writes w   22 their argument count c
--   23..22+c the writes   then job hash field/value pairs
-- (message_end.lua, dead_letters.lua, monitor.lua, stage_event.lua and
-- job_writes.lua are prepended.)

-- What the batch does once for all its outcomes (see above).
local acks, counts, trims = {}, {}, {}

local function acknowledge(stream, entry)
  local entries = acks[stream]
  if not entries then
    entries = {}
    acks[stream] = entries
  end
  entries[#entries + 1] = entry
end

local function finish_one(K, A)
  local owner = redis.call('HMGET', K[1], 'state', 'entry', 'cancel', 'created_at', 'started_at',
    'message_session', 'message_id', 'attempt_records')
  local writes, write_args = tonumber(A[21]), tonumber(A[22])
  if owner[1] ~= 'active' or owner[2] ~= A[2] then
    acknowledge(K[2], A[2])
    if writes > 0 then
      redis.call('INCRBY', K[9], writes)
    end
    return 0
  end
  if owner[3] and A[5] ~= 'cancelled' then
    return 2
  end
  acknowledge(K[2], A[2])
  local progress = {}
  if writes > 0 and not owner[3] then
    progress = apply_writes(K[3], K[4], A[3], A[4], A[12], A, 23, writes)
  end
  if A[11] ~= '' then
    local record = (tonumber(owner[8]) or 0) + 1
    redis.call('HSET', K[1], 'attempt_records', record, 'attempt:' .. record, A[11])
  end
  -- The attempt's last progress goes first: the outcome's own fields (a
  -- completed job's progress of 100) win over it.
  if #progress > 0 then
    redis.call('HSET', K[1], 'state', A[5], 'finished_at', A[4], progress[1], progress[2],
      progress[3], progress[4], unpack(A, 23 + write_args))
  else
    redis.call('HSET', K[1], 'state', A[5], 'finished_at', A[4], unpack(A, 23 + write_args))
  end
  if owner[3] then
    redis.call('HDEL', K[1], 'cancel')
  end
  if A[5] == 'delayed' then
    redis.call('ZADD', K[5], A[6], A[3])
  else
    -- A history keeps the last A[7] ids (none at 0); the total counts them all.
    local history = tonumber(A[7])
    if history > 0 then
      redis.call('ZADD', K[5], A[6], A[3])
      trims[K[5]] = history
    end
    counts[K[6]] = (counts[K[6]] or 0) + 1
    -- The request ended (a retry is not an end).
    monitor_request(A[18], A[5], owner[4], owner[5], A[4])
  end
  if A[5] == 'failed' then
    local snapshot = cjson.encode(redis.call('HGETALL', K[1]))
    add_dead_letter(K[7], K[8], A[3], A[4], snapshot, A[17])
  end
  redis.call('XADD', K[3], 'MAXLEN', '~', A[12], '*',
    'event_type', A[9], 'data', A[10], 'timestamp', A[4])
  copy_to_root(K[3], A[3], A[12],
    'event_type', A[9], 'data', A[10], 'timestamp', A[4])
  local message, message_stream = driven_message(A[19], K[1], A[3], owner[6], owner[7])
  if message then
    end_message(message, message_stream, A[13], A[14], A[4], A[15], A[16])
  end
  -- The ttl goes to EXPIRE as the string it came as: Redis formats a Lua
  -- number argument with %.17g, which showed in a loaded Redis' profile.
  if tonumber(A[8]) > 0 then
    redis.call('EXPIRE', K[1], A[8])
    redis.call('EXPIRE', K[3], A[8])
    if A[20] == '1' or owner[8] then
      redis.call('EXPIRE', K[4], A[8])
    end
  end
  return 1
end

-- Records the n outcomes found from argv[first_arg] (n, then per outcome
-- its argument count and arguments), their keys from keys[first_key + 1];
-- returns their results and the index of the first argument after them.
local function finish_outcomes(keys, first_key, argv, first_arg)
  acks, counts, trims = {}, {}, {}
  local results = {}
  local group = nil
  local next_arg = first_arg + 1
  for n = 1, tonumber(argv[first_arg]) do
    local base = first_key + (n - 1) * 9
    local K = {unpack(keys, base + 1, base + 9)}
    local count = tonumber(argv[next_arg])
    local A = {unpack(argv, next_arg + 1, next_arg + count)}
    next_arg = next_arg + count + 1
    group = A[1]
    -- One outcome that cannot be written (a key of the wrong type, say) must
    -- not keep the others of its batch from being recorded: it gets its error.
    local ok, result = pcall(finish_one, K, A)
    if ok then
      results[n] = result
    else
      results[n] = type(result) == 'table' and result.err or tostring(result)
    end
  end
  for stream, entries in pairs(acks) do
    redis.call('XACK', stream, group, unpack(entries))
    redis.call('XDEL', stream, unpack(entries))
  end
  for counter, n in pairs(counts) do
    redis.call('INCRBY', counter, n)
  end
  for history, kept in pairs(trims) do
    redis.call('ZREMRANGEBYRANK', history, 0, -(kept + 1))
  end
  monitor_flush()
  return results, next_arg
end
