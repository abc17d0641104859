-- Promotes a delayed job (one waiting for its retry): it leaves the delayed
-- set and enters its class stream now, as claim.lua does when its time comes
-- (enter_stream.lua), keeping its class, priority and attempt count. The
-- queue's workers are woken and the job's stream (and its root's) gets the
-- queued event, marked as promoted.
-- Returns {'promoted', new stream entry id}, {'not_found'} when no job of
-- this queue has the id, or {'not_delayed', its state}.
-- KEYS[1] job hash   KEYS[2] delayed zset   KEYS[3..5] high/normal/low streams
-- KEYS[6] job event stream
-- ARGV[1] job id   ARGV[2] now (ms)   ARGV[3] wake channel   ARGV[4] event type (queued)
-- ARGV[5] events kept   ARGV[6] queue name
-- (enter_stream.lua and stage_event.lua are prepended.)
local record = redis.call('HMGET', KEYS[1], 'state', 'queue')
if not record[1] or record[2] ~= ARGV[6] then
  return {'not_found'}
end
if record[1] ~= 'delayed' or redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then
  return {'not_delayed', record[1]}
end
local entry = enter_stream(KEYS[1], ARGV[1], KEYS[3], KEYS[4], KEYS[5])
local promoted = cjson.encode({promoted = true})
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[5], '*', 'event_type', ARGV[4],
  'data', promoted, 'timestamp', ARGV[2])
copy_to_root(KEYS[6], ARGV[1], ARGV[5],
  'event_type', ARGV[4], 'data', promoted, 'timestamp', ARGV[2])
publish(ARGV[3], ARGV[6])
return {'promoted', entry}
