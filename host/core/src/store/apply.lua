-- Applies one change to a message atomically: its snapshot fields, text, blocks,
-- large content blocks, and the events that announce the change, each event
-- numbered with the message's next sequence number. Creating a message also
-- indexes it in its session. All TTLs are refreshed.
-- Returns {'ok', last seq} or a refusal: {'missing'} (no such message),
-- {'exists'} (create of an existing id), {'no_session'}, {'finished', status}
-- (the message is no longer streaming), {'task', task id, status} (a task that
-- had to be running is not), {'fenced'} (a job's attempt that no longer owns
-- its job, or whose job no longer drives the message), {'cancelled'} (the
-- writing job's cancel was accepted).
-- KEYS[1] message hash   KEYS[2] message event stream   KEYS[3] session hash
-- KEYS[4] session message index (zset)   KEYS[5] index of all sessions (zset)
-- KEYS[6] the writing job's hash   KEYS[7] its queue's fenced-write counter
-- KEYS[8] the message's text (string; appended to, never rewritten)
-- KEYS[9..] the hashes of the content blocks stored apart, in the order of
--   the contents section
-- ARGV[1] now (ms)   ARGV[2] message ttl (s)   ARGV[3] max events
-- ARGV[4] content ttl (s)   ARGV[5] session ttl (s)
-- ARGV[6] requirement: 'absent' (create), 'streaming' or 'exists'
-- ARGV[7] text to append ('' for none)
-- ARGV[8] the writing attempt's fence token ('' when a client writes)   ARGV[9] its job id
-- ARGV[10..] sections, each a count then its items:
--   guards: task ids that must be running, or, prefixed with '!', task ids
--   that must not exist yet (a task id chosen by the caller)
--   fields: field, value
--   blocks: mode ('append' | 'replace' | 'remove'), block id, snapshot JSON
--   contents: content id, JSON, message id, block type, bytes
--   events: event type, data JSON
local now, message, stream = ARGV[1], KEYS[1], KEYS[2]
local requirement = ARGV[6]

if ARGV[8] ~= '' then
  local refusal = fence_refusal(KEYS[6], ARGV[8], KEYS[7])
  if refusal then return {refusal} end
  if redis.call('HGET', message, 'job_id') ~= ARGV[9] then return {'fenced'} end
end

if requirement == 'absent' then
  if redis.call('EXISTS', message) == 1 then return {'exists'} end
  if redis.call('EXISTS', KEYS[3]) == 0 then return {'no_session'} end
else
  local status = redis.call('HGET', message, 'status')
  if not status then return {'missing'} end
  if requirement == 'streaming' and status ~= 'streaming' then return {'finished', status} end
end

local at = 10
local function section()
  local count = tonumber(ARGV[at])
  at = at + 1
  return count
end

for _ = 1, section() do
  local task = ARGV[at]
  at = at + 1
  if string.sub(task, 1, 1) == '!' then
    task = string.sub(task, 2)
    if redis.call('HEXISTS', message, 'task:' .. task .. ':status') == 1 then
      return {'task_exists', task}
    end
  else
    local status = redis.call('HGET', message, 'task:' .. task .. ':status')
    if status ~= 'running' then return {'task', task, status or 'unknown'} end
  end
end

-- O(delta): APPEND never copies the text already stored (reading it into
-- Lua and writing it back did, on every delta, blocking Redis for everyone).
if ARGV[7] ~= '' then
  -- A message from before the text key: move its text over once.
  local legacy = redis.call('HGET', message, 'text')
  if legacy then
    redis.call('APPEND', KEYS[8], legacy)
    redis.call('HDEL', message, 'text')
  end
  redis.call('APPEND', KEYS[8], ARGV[7])
end

for _ = 1, section() do
  redis.call('HSET', message, ARGV[at], ARGV[at + 1])
  at = at + 2
end

for _ = 1, section() do
  local mode, block, json = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  at = at + 3
  local order = redis.call('HGET', message, 'block_order') or ''
  if mode == 'append' then
    if order == '' then order = block else order = order .. ',' .. block end
    redis.call('HSET', message, 'block_order', order, 'block:' .. block, json)
  elseif mode == 'replace' then
    redis.call('HSET', message, 'block:' .. block, json)
  else
    local kept = {}
    for id in string.gmatch(order, '[^,]+') do
      if id ~= block then kept[#kept + 1] = id end
    end
    redis.call('HSET', message, 'block_order', table.concat(kept, ','))
    redis.call('HDEL', message, 'block:' .. block)
  end
end

for content = 1, section() do
  local key = KEYS[8 + content]
  redis.call('HSET', key, 'id', ARGV[at], 'block', ARGV[at + 1], 'message_id', ARGV[at + 2],
    'type', ARGV[at + 3], 'bytes', ARGV[at + 4], 'created_at', now)
  redis.call('EXPIRE', key, ARGV[4])
  at = at + 5
end

local seq = tonumber(redis.call('HGET', message, 'seq') or '0')
for _ = 1, section() do
  seq = redis.call('HINCRBY', message, 'seq', 1)
  redis.call('XADD', stream, 'MAXLEN', ARGV[3], '*',
    'seq', seq, 'event_type', ARGV[at], 'data', ARGV[at + 1], 'timestamp', now)
  at = at + 2
end

redis.call('HSET', message, 'updated_at', now)
redis.call('EXPIRE', message, ARGV[2])
if redis.call('EXISTS', stream) == 1 then redis.call('EXPIRE', stream, ARGV[2]) end
if redis.call('EXISTS', KEYS[8]) == 1 then redis.call('EXPIRE', KEYS[8], ARGV[2]) end

if requirement == 'absent' then
  local session = redis.call('HGET', message, 'session_id')
  redis.call('ZADD', KEYS[4], redis.call('HGET', message, 'created_at'), redis.call('HGET', message, 'id'))
  redis.call('HSET', KEYS[3], 'updated_at', now)
  redis.call('ZADD', KEYS[5], now, session)
  redis.call('EXPIRE', KEYS[3], ARGV[5])
  redis.call('EXPIRE', KEYS[4], ARGV[5])
end
return {'ok', seq}
