-- Puts the jobs of vanished workers back in line. An entry pending longer than
-- the visibility timeout belongs to a worker that stopped heart-beating (crashed,
-- killed, cut off): it is acknowledged and the job queued again at the tail of
-- its class stream. If that worker was merely slow, its finish is refused later
-- because the job now points at the new entry, so no job completes twice. A job
-- whose cancel was accepted is not restarted: it ends cancelled here. The
-- session message such a job drives ends with it; a requeued job's message
-- keeps streaming but the tasks its lost attempt left running fail.
-- Returns {next cursor per stream (3), jobs requeued}.
-- KEYS[1..3] high/normal/low streams
-- ARGV[1] group   ARGV[2] recovery consumer   ARGV[3] min idle (ms)   ARGV[4] now (ms)
-- ARGV[5] job key prefix   ARGV[6] event key prefix   ARGV[7] wake channel
-- ARGV[8] queue name   ARGV[9..11] cursors   ARGV[12] event type (requeued)
-- ARGV[13] events kept   ARGV[14] event type (cancelled)   ARGV[15] ttl of a cancelled job (s)
-- ARGV[16] message ttl (s)   ARGV[17] message events kept
-- ARGV[18] monitoring key prefix (a job ending cancelled here is counted)
-- ARGV[19] the queue's sessions prefix (see message_end.lua)
-- (message_end.lua and monitor.lua are prepended.)
local cursors, requeued = {}, 0
for i = 1, 3 do
  local reply = redis.call('XAUTOCLAIM', KEYS[i], ARGV[1], ARGV[2], ARGV[3], ARGV[8 + i], 'COUNT', 100)
  cursors[i] = reply[1]
  for _, entry in ipairs(reply[2]) do
    local entry_id, fields = entry[1], entry[2]
    redis.call('XACK', KEYS[i], ARGV[1], entry_id)
    redis.call('XDEL', KEYS[i], entry_id)
    if fields and fields[2] then
      local id = fields[2]
      local job = ARGV[5] .. id
      local owner = redis.call('HMGET', job, 'state', 'entry', 'worker', 'cancel')
      if owner[1] == 'active' and owner[2] == entry_id and owner[4] then
        redis.call('HSET', job, 'state', 'cancelled', 'finished_at', ARGV[4], 'error', 'cancelled by request')
        redis.call('HDEL', job, 'cancel')
        redis.call('XADD', ARGV[6] .. id, 'MAXLEN', '~', ARGV[13], '*', 'event_type', ARGV[14],
          'data', cjson.encode({previous_state = 'active', reason = 'worker stopped responding'}), 'timestamp', ARGV[4])
        -- The guest's state expires with the record.
        for _, key in ipairs({job, ARGV[6] .. id, job .. ':state'}) do
          redis.call('EXPIRE', key, ARGV[15])
        end
        local message, message_stream = driven_message(ARGV[19], job, id)
        if message then
          end_message(message, message_stream, 'error', 'the job was cancelled', ARGV[4], ARGV[16], ARGV[17])
        end
        monitor_request(ARGV[18], 'cancelled')
      elseif owner[1] == 'active' and owner[2] == entry_id then
        local fresh = redis.call('XADD', KEYS[i], '*', 'job', id)
        redis.call('HSET', job, 'state', 'waiting', 'entry', fresh)
        redis.call('XADD', ARGV[6] .. id, 'MAXLEN', '~', ARGV[13], '*', 'event_type', ARGV[12],
          'data', cjson.encode({reason = 'worker stopped responding', worker = owner[3]}), 'timestamp', ARGV[4])
        requeued = requeued + 1
        local message, message_stream = driven_message(ARGV[19], job, id)
        if message then
          end_message(message, message_stream, 'retrying', 'its worker stopped responding; the job runs again',
            ARGV[4], ARGV[16], ARGV[17])
        end
      end
    end
  end
end
monitor_flush()
if requeued > 0 then
  publish(ARGV[7], ARGV[8])
end
return {cursors[1], cursors[2], cursors[3], requeued}
