-- Moves a dead job back into its class stream for a fresh set of attempts.
-- The letter is found through the queue's index (never by reading the stream)
-- and only if it names this job. The record is restored from the letter's
-- snapshot if it has expired. A record that exists but is not this failed job
-- (its id was reused, in this queue or another, after the record expired) is
-- left alone: replaying would queue a second run of a live job.
-- Returns {'replayed', new stream entry id}, {'not_dead'} when the queue has
-- no letter of the job, or {'taken', queue of the record} when the id now
-- names another job.
-- KEYS[1] dead-letter stream   KEYS[2] its index   KEYS[3] job hash   KEYS[4] job event stream
-- KEYS[5..7] the queue's high/normal/low streams
-- ARGV[1] job id   ARGV[2] now (ms)   ARGV[3] wake channel
-- ARGV[4] event type (queued)   ARGV[5] events kept   ARGV[6] queue name
-- (dead_letters.lua is prepended.)
local found = find_dead_letter(KEYS[1], KEYS[2], ARGV[1])
if not found then
  return {'not_dead'}
end
local record = redis.call('HMGET', KEYS[3], 'state', 'queue')
if record[1] and (record[1] ~= 'failed' or record[2] ~= ARGV[6]) then
  return {'taken', record[2] or ''}
end
drop_dead_letter(KEYS[1], KEYS[2], found[1], ARGV[1])
if not record[1] then
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[3], unpack(cjson.decode(entry_field(found[2], 'record'))))
end
redis.call('PERSIST', KEYS[3])
local job = redis.call('HMGET', KEYS[3], 'queue', 'class')
local streams = {high = KEYS[5], normal = KEYS[6], low = KEYS[7]}
local entry = redis.call('XADD', streams[job[2]], '*', 'job', ARGV[1])
redis.call('HSET', KEYS[3], 'state', 'waiting', 'attempts', 0, 'entry', entry, 'progress', 0)
redis.call('HDEL', KEYS[3], 'error', 'finished_at', 'dead_entry', 'result', 'cancel', 'cancel_requested_at')
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'event_type', ARGV[4],
  'data', cjson.encode({replayed = true}), 'timestamp', ARGV[2])
publish(ARGV[3], job[1])
return {'replayed', entry}
