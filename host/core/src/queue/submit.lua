-- Enqueues jobs of one queue, each on its own: its hash, its stream entry and
-- its first event, then one wake-up for idle workers if any was queued. The
-- single submissions that arrive together share a call (`intake::group`);
-- a refusal refuses its own item only. Each item answers its stream entry
-- id, or why it was refused:
--   'full'       its class stream holds max waiting jobs;
--   'duplicate'  its id is taken (a follow-up job handed on twice);
--   'fenced'     a follow-up whose asking attempt no longer holds its own
--                job's fence (nothing queued), or whose parent's session
--                message is no longer driven by the parent;
--   'cancelled'  a follow-up whose parent's cancel was accepted.
-- A follow-up that takes its parent's session message takes it in the same
-- step.
-- ARGV[1] now (ms)   ARGV[2] wake channel   ARGV[3] queue name   ARGV[4] event type
-- ARGV[5] events kept   ARGV[6] the queue's sessions prefix (see message_end.lua)
-- then per item i, from KEYS[5i-4] and its own run of ARGV from ARGV[7]:
--   KEYS: class stream, job hash, job event stream, the parent job's hash,
--         the parent queue's fenced-write counter
--   ARGV: max waiting in its class stream, job id, event data, the parent
--         attempt's fence token ('' for a job with no parent), the parent
--         job's id, the id of the parent's session message the job takes (''
--         for none; its key is `message:{id}` after ARGV[6]), n, then n job
--         hash field/value pairs
local function submit_one(K, max_waiting, id, event, token, parent_id, message_id, fields)
  if redis.call('EXISTS', K[2]) == 1 then
    return 'duplicate'
  end
  if token ~= '' then
    -- A job that moved on, or whose cancel was accepted, queues nothing.
    local refusal = fence_refusal(K[4], token, K[5])
    if refusal then
      return refusal
    end
  end
  if redis.call('XLEN', K[1]) >= tonumber(max_waiting) then
    return 'full'
  end
  if message_id ~= '' then
    local message = ARGV[6] .. 'message:' .. message_id
    if redis.call('HGET', message, 'job_id') ~= parent_id then
      return 'fenced'
    end
    redis.call('HSET', message, 'job_id', id)
  end
  local entry = redis.call('XADD', K[1], '*', 'job', id)
  redis.call('HSET', K[2], 'entry', entry, unpack(fields))
  redis.call('XADD', K[3], 'MAXLEN', '~', ARGV[5], '*',
    'event_type', ARGV[4], 'data', event, 'timestamp', ARGV[1])
  copy_to_root(K[3], id, ARGV[5],
    'event_type', ARGV[4], 'data', event, 'timestamp', ARGV[1])
  return entry, true
end

local answers = {}
local queued = false
local at = 7
for i = 1, #KEYS / 5 do
  local k = 5 * (i - 1)
  local field_pairs = tonumber(ARGV[at + 6])
  local answer, entered = submit_one(
    {KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5]},
    ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4], ARGV[at + 5],
    {unpack(ARGV, at + 7, at + 6 + 2 * field_pairs)})
  answers[i] = answer
  queued = queued or entered
  at = at + 7 + 2 * field_pairs
end
if queued then
  publish(ARGV[2], ARGV[3])
end
return answers
