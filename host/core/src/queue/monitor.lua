-- Request figures for the designs' monitoring (`GET /api/metrics`), written in
-- the same atomic step as the job's end by the scripts that end a job (finish,
-- cancel, recover): Rust prepends this file to each of them. A request is a job
-- that ended for good (completed, failed, cancelled); a retried attempt is not.
-- Figures go to buckets of MONITOR_BUCKET_SECS of Redis `TIME`, so that every
-- instance writes and reads the same buckets whatever its own clock says:
-- `{prefix}{bucket}` hashes (prefix `spool:q:{queue}:monitor:`) with the fields
-- completed, failed, cancelled, and for answered requests (completed, failed)
-- response_ms (submitted to finished: what the client waits) and
-- processing_ms (the final attempt's start to finished). An answered request
-- whose record lacks a time is counted in response_missing or
-- processing_missing instead, so that an average divides by the answered
-- requests less those (monitor_read.lua): every request has both times in
-- practice, and a count of its own would cost each batch two more writes.
-- A bucket expires once the longest window (60 minutes) has passed it; its
-- expiry is set when a write creates a field, which its first write does.
-- A script that ends many jobs (a batch of outcomes, a recovery sweep) counts
-- them all with one HINCRBY per field: `monitor_request` adds up, and the
-- script calls `monitor_flush` once before it returns.
local MONITOR_BUCKET_SECS = 10
local MONITOR_KEEP_SECS = 3600 + 120

local monitor_pending = {}
local monitor_bucket = nil

-- Counts one request that ended as `outcome`; times are in ms, as the job
-- record keeps them (a missing one is counted as missing, not averaged).
local function monitor_request(prefix, outcome, created_at, started_at, finished_at)
  if not monitor_bucket then
    monitor_bucket = math.floor(tonumber(redis.call('TIME')[1]) / MONITOR_BUCKET_SECS)
  end
  local key = prefix .. monitor_bucket
  local sums = monitor_pending[key]
  if not sums then
    sums = {}
    monitor_pending[key] = sums
  end
  local function add(field, n)
    sums[field] = (sums[field] or 0) + n
  end
  add(outcome, 1)
  if outcome == 'cancelled' then
    return
  end
  local finished = tonumber(finished_at)
  local created, started = tonumber(created_at), tonumber(started_at)
  if finished and created then
    add('response_ms', math.max(0, finished - created))
  else
    add('response_missing', 1)
  end
  if finished and started then
    add('processing_ms', math.max(0, finished - started))
  else
    add('processing_missing', 1)
  end
end

-- Writes what `monitor_request` counted since the last flush.
local function monitor_flush()
  for key, sums in pairs(monitor_pending) do
    local new_field = false
    for field, n in pairs(sums) do
      -- A sum of zero adds nothing: a missing field reads as zero.
      if n > 0 and redis.call('HINCRBY', key, field, n) == n then
        new_field = true
      end
    end
    if new_field then
      redis.call('EXPIRE', key, MONITOR_KEEP_SECS)
    end
  end
  monitor_pending = {}
end
