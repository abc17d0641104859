-- Request figures for the designs' monitoring (`GET /api/metrics`), written in
-- the same atomic step as the job's end by the scripts that end a job (finish,
-- cancel, recover): Rust prepends this file to each of them. A request is a job
-- that ended for good (completed, failed, cancelled); a retried attempt is not.
-- Figures go to buckets of MONITOR_BUCKET_SECS of Redis `TIME`, so that every
-- instance writes and reads the same buckets whatever its own clock says:
-- `{prefix}{bucket}` hashes (prefix `spool:q:{queue}:monitor:`) with the fields
-- completed, failed, cancelled, and for answered requests (completed, failed)
-- response_ms / response_count (submitted to finished: what the client waits)
-- and processing_ms / processing_count (the final attempt's start to finished).
-- A bucket expires once the longest window (60 minutes) has passed it.
local MONITOR_BUCKET_SECS = 10
local MONITOR_KEEP_SECS = 3600 + 120

-- Counts one request that ended as `outcome`; times are in ms, as the job
-- record keeps them (missing ones are not averaged).
local function monitor_request(prefix, outcome, created_at, started_at, finished_at)
  local bucket = prefix .. math.floor(tonumber(redis.call('TIME')[1]) / MONITOR_BUCKET_SECS)
  redis.call('HINCRBY', bucket, outcome, 1)
  local finished = tonumber(finished_at)
  if outcome ~= 'cancelled' and finished then
    local created, started = tonumber(created_at), tonumber(started_at)
    if created then
      redis.call('HINCRBY', bucket, 'response_ms', math.max(0, finished - created))
      redis.call('HINCRBY', bucket, 'response_count', 1)
    end
    if started then
      redis.call('HINCRBY', bucket, 'processing_ms', math.max(0, finished - started))
      redis.call('HINCRBY', bucket, 'processing_count', 1)
    end
  end
  redis.call('EXPIRE', bucket, MONITOR_KEEP_SECS)
end

