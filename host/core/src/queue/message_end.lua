-- Ending a session message, prepended to the scripts that end one: the job
-- outcome scripts (finish, cancel, recover), so that a job's message ends in
-- the same atomic step as the job, and the store's end script. Key names are
-- the store's: design D's (`message:{id}`, `message:{id}:text`,
-- `stream:session:{session}:message:{id}`) after the job's queue's sessions
-- prefix (empty on one server; on a cluster the queue's own, so they share its
-- slot).

-- The message hash and event stream of the message job `job_id` drives, or
-- nil when it drives none (never bound, or passed on to a follow-up job).
-- `prefix` is the job's queue's sessions prefix. `session` and `message_id`
-- are the job's `message_session` and `message_id` fields when the caller has
-- read them already (else they are read here).
local function driven_message(prefix, job_key, job_id, session, message_id)
  if session == nil and message_id == nil then
    local bound = redis.call('HMGET', job_key, 'message_session', 'message_id')
    session, message_id = bound[1], bound[2]
  end
  if not session or not message_id then
    return nil
  end
  local message = prefix .. 'message:' .. message_id
  if redis.call('HGET', message, 'job_id') ~= job_id then
    return nil
  end
  return message, prefix .. 'stream:session:' .. session .. ':message:' .. message_id
end

-- Fails the message's running tasks (their placeholder blocks go), then ends
-- it: `ending` is 'completed', 'error' (with `error`), or 'retrying' (the job
-- runs again: only the tasks fail, the message keeps streaming). Each change is
-- an event numbered with the message's next seq. Returns the last seq, or
-- false (nothing written) when the message is missing or no longer streaming.
local function end_message(message, stream, ending, error, now, ttl, max_events)
  if redis.call('HGET', message, 'status') ~= 'streaming' then
    return false
  end
  local seq = tonumber(redis.call('HGET', message, 'seq') or '0')
  local function event(event_type, data)
    seq = redis.call('HINCRBY', message, 'seq', 1)
    redis.call('XADD', stream, 'MAXLEN', max_events, '*',
      'seq', seq, 'event_type', event_type, 'data', cjson.encode(data), 'timestamp', now)
  end

  local task_error = error
  if ending == 'completed' then
    task_error = 'the message was completed while the task was still running'
  end
  local fields = redis.call('HGETALL', message)
  for i = 1, #fields, 2 do
    local task = string.match(fields[i], '^task:(.+):status$')
    if task and fields[i + 1] == 'running' then
      local prefix = 'task:' .. task .. ':'
      redis.call('HSET', message, prefix .. 'status', 'failed', prefix .. 'error', task_error,
        prefix .. 'finished_at', now)
      local kept = {}
      for id in string.gmatch(redis.call('HGET', message, 'block_order') or '', '[^,]+') do
        if id ~= task then kept[#kept + 1] = id end
      end
      redis.call('HSET', message, 'block_order', table.concat(kept, ','))
      redis.call('HDEL', message, 'block:' .. task)
      event('task_failed', {taskId = task, error = task_error})
      event('content_updated', {blockId = task, block = cjson.null, removed = true})
    end
  end

  if ending == 'completed' then
    redis.call('HSET', message, 'status', 'completed')
    event('message_end', {status = 'completed'})
  elseif ending == 'error' then
    redis.call('HSET', message, 'status', 'error', 'error', error)
    event('error', {message = error})
    event('message_end', {status = 'error', error = error})
  end
  redis.call('HSET', message, 'updated_at', now)
  redis.call('EXPIRE', message, ttl)
  if redis.call('EXISTS', stream) == 1 then
    redis.call('EXPIRE', stream, ttl)
  end
  -- The text lives beside the hash (`message:{id}:text`) and expires with it.
  local text = message .. ':text'
  if redis.call('EXISTS', text) == 1 then
    redis.call('EXPIRE', text, ttl)
  end
  return seq
end
