-- Ends a message at a client's or a guest's request (the queue's scripts end
-- a job's message themselves): its running tasks fail, then it completes or
-- ends in an error (see end_message). A guest's request is fenced like its
-- other writes.
-- Returns {'ok', last seq}, {'missing'}, {'finished', status}, {'fenced'} or
-- {'cancelled'} (the writing job's cancel was accepted).
-- KEYS[1] message hash   KEYS[2] message event stream
-- KEYS[3] the writing job's hash   KEYS[4] its queue's fenced-write counter
-- ARGV[1] ending ('completed' or 'error')   ARGV[2] error   ARGV[3] now (ms)
-- ARGV[4] message ttl (s)   ARGV[5] events kept
-- ARGV[6] the writing attempt's fence token ('' when a client writes)   ARGV[7] its job id
if ARGV[6] ~= '' then
  local refusal = fence_refusal(KEYS[3], ARGV[6], KEYS[4])
  if refusal then return {refusal} end
  if redis.call('HGET', KEYS[1], 'job_id') ~= ARGV[7] then return {'fenced'} end
end
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
local seq = end_message(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
if not seq then return {'finished', status} end
return {'ok', seq}
