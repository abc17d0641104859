-- Writes of a running attempt to its own job, in order, applied only while the
-- attempt holds the job's fence: events, its progress (field and event), keys
-- of the guest's state. A batch is written whole or not at all; a refused one
-- counts each of its writes. Returns 1 when written, 0 when fenced off, 2 when
-- refused because the job's cancel was accepted.
-- KEYS[1] job hash   KEYS[2] fenced-write counter   KEYS[3] job event stream
-- KEYS[4] job state hash
-- ARGV[1] fence token   ARGV[2] now (ms)   ARGV[3] events kept
-- ARGV[4] job id (named by the caller, which knows it, rather than read back
--   from the job hash)   ARGV[5] the number of writes
-- ARGV[6..] the writes (see job_writes.lua)
-- (fence.lua, stage_event.lua and job_writes.lua are prepended.)
local refusal = fence_refusal(KEYS[1], ARGV[1], KEYS[2], tonumber(ARGV[5]))
if refusal == 'fenced' then
  return 0
elseif refusal == 'cancelled' then
  return 2
end
local progress = apply_writes(KEYS[3], KEYS[4], ARGV[4], ARGV[2], ARGV[3], ARGV, 6,
  tonumber(ARGV[5]))
if #progress > 0 then
  redis.call('HSET', KEYS[1], unpack(progress))
end
return 1
