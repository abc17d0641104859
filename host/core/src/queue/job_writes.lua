-- A running attempt's writes to its own job, applied in order once the caller
-- checked the attempt's fence: by fenced.lua while the attempt runs, and by
-- finish.lua for the writes still pending when it ended (they go with its
-- outcome, in the same call). Prepended to both, after stage_event.lua.
-- `argv[at]` is the first of `n` writes, each an operation and its arguments:
--   'event' event type, data
--   'progress' event type, data, percent, step
--   'state_set' key, value
--   'state_delete' key
-- Raises on an operation it does not know (the host sends only these).
-- Every progress write is an event, but only the last one's fields last: they
-- are returned ({'progress', percent, 'step', step}, or {} when none) for the
-- caller to write with its own HSET of the job, one command instead of one
-- per write (a chat job reports three).
local function apply_writes(events_key, state_key, job_id, now, events_kept, argv, at, n)
  local progress = {}
  local function event(event_type, data)
    redis.call('XADD', events_key, 'MAXLEN', '~', events_kept, '*',
      'event_type', event_type, 'data', data, 'timestamp', now)
    copy_to_root(events_key, job_id, events_kept,
      'event_type', event_type, 'data', data, 'timestamp', now)
  end
  for _ = 1, n do
    local operation = argv[at]
    if operation == 'event' then
      event(argv[at + 1], argv[at + 2])
      at = at + 3
    elseif operation == 'progress' then
      progress = {'progress', argv[at + 3], 'step', argv[at + 4]}
      event(argv[at + 1], argv[at + 2])
      at = at + 5
    elseif operation == 'state_set' then
      redis.call('HSET', state_key, argv[at + 1], argv[at + 2])
      at = at + 3
    elseif operation == 'state_delete' then
      redis.call('HDEL', state_key, argv[at + 1])
      at = at + 2
    else
      error('unknown fenced write ' .. tostring(operation))
    end
  end
  return progress
end
