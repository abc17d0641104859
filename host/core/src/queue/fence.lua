-- Fencing, prepended to every script that writes on behalf of a running
-- attempt. The attempt that claimed a job holds the job's stream entry id as
-- its token. Once the job moved on (recovered and claimed by another attempt,
-- finished) the token no longer matches: the write is refused ('fenced') and
-- counted, so a paused or cut-off worker cannot touch a job it lost. Once a
-- cancel was accepted the owner's writes are refused too ('cancelled'): nothing
-- of the job changes after its cancel. Returns nil when the write may go on.
-- `writes` is how many writes a refusal counts (1 when nil).
local function fence_refusal(job_key, token, counter, writes)
  local owner = redis.call('HMGET', job_key, 'state', 'entry', 'cancel')
  if owner[1] ~= 'active' or owner[2] ~= token then
    redis.call('INCRBY', counter, writes or 1)
    return 'fenced'
  end
  if owner[3] then
    return 'cancelled'
  end
  return nil
end
