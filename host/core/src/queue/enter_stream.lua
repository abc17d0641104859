-- Puts a delayed job back in line: a new entry in its class's stream, state
-- waiting. Its attempts, class and priority stay as they are. Shared by
-- claim.lua (retries whose time has come) and promote.lua (an admin's
-- "run it now"), so both move a job the same way. Returns the new entry id,
-- or nil when the record is gone (then nothing is queued).
local function enter_stream(job, id, high, normal, low)
  local class = redis.call('HGET', job, 'class')
  if not class then
    return nil
  end
  local stream = normal
  if class == 'high' then stream = high elseif class == 'low' then stream = low end
  local entry = redis.call('XADD', stream, '*', 'job', id)
  redis.call('HSET', job, 'state', 'waiting', 'entry', entry)
  return entry
end
