-- Moves a dead job back into its class stream for a fresh set of attempts.
-- The record is restored from the dead-letter snapshot if it has expired.
-- Returns the new stream entry id, or false when the job is not in the
-- dead-letter stream.
-- KEYS[1] dead-letter stream   KEYS[2] job hash   KEYS[3] job event stream
-- ARGV[1] job id   ARGV[2] now (ms)   ARGV[3] queue key prefix   ARGV[4] wake channel
-- ARGV[5] event type (queued)   ARGV[6] events kept
local found
local hint = redis.call('HGET', KEYS[2], 'dead_entry')
if hint then
  local entry = redis.call('XRANGE', KEYS[1], hint, hint)[1]
  if entry then found = {entry[1], entry[2]} end
end
if not found then
  -- The record expired with its pointer: look the job up in the stream.
  for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
    if entry[2][2] == ARGV[1] then
      found = {entry[1], entry[2]}
      break
    end
  end
end
if not found then
  return false
end
redis.call('XDEL', KEYS[1], found[1])
if redis.call('EXISTS', KEYS[2]) == 0 then
  local snapshot = cjson.decode(found[2][6])
  redis.call('HSET', KEYS[2], unpack(snapshot))
end
redis.call('PERSIST', KEYS[2])
local job = redis.call('HMGET', KEYS[2], 'queue', 'class')
local entry = redis.call('XADD', ARGV[3] .. '{' .. job[1] .. '}:' .. job[2], '*', 'job', ARGV[1])
redis.call('HSET', KEYS[2], 'state', 'waiting', 'attempts', 0, 'entry', entry, 'progress', 0)
redis.call('HDEL', KEYS[2], 'error', 'finished_at', 'dead_entry', 'result', 'cancel', 'cancel_requested_at')
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'event_type', ARGV[5],
  'data', cjson.encode({replayed = true}), 'timestamp', ARGV[2])
redis.call('PUBLISH', ARGV[4], job[1])
return entry
