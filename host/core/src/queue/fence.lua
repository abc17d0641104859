-- Fencing, prepended to every script that writes on behalf of a running
-- attempt. The attempt that claimed a job holds the job's stream entry id as
-- its token. Once the job moved on (recovered and claimed by another attempt,
-- finished, cancelled) the token no longer matches: the write is refused and
-- counted, so a paused or cut-off worker cannot touch a job it lost.
local function fence_holds(job_key, token, counter)
  local owner = redis.call('HMGET', job_key, 'state', 'entry')
  if owner[1] == 'active' and owner[2] == token then
    return true
  end
  redis.call('INCR', counter)
  return false
end
