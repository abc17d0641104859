-- Sums a queue's monitoring buckets (see monitor.lua, prepended) over sliding
-- windows, by Redis `TIME`, so that every instance answers the same. A window
-- of n minutes is the current (partial) bucket and the buckets before it that
-- make n minutes in all: the last n minutes, to within one bucket.
-- Returns, per window, {completed, failed, cancelled, response_ms,
-- response_count, processing_ms, processing_count}, where a count is the
-- answered requests (completed, failed) that had the time (monitor.lua).
-- KEYS[1] the queue's monitoring key prefix (`spool:q:{queue}:monitor:`)
-- ARGV[1..] window lengths in minutes, ascending
local fields = {'completed', 'failed', 'cancelled', 'response_ms', 'response_missing',
  'processing_ms', 'processing_missing'}
local per_minute = 60 / MONITOR_BUCKET_SECS
local now = math.floor(tonumber(redis.call('TIME')[1]) / MONITOR_BUCKET_SECS)
local totals = {0, 0, 0, 0, 0, 0, 0}
local windows = {}
local next_window = 1
local longest = tonumber(ARGV[#ARGV]) * per_minute
for age = 0, longest - 1 do
  local values = redis.call('HMGET', KEYS[1] .. (now - age), unpack(fields))
  for i = 1, #fields do
    totals[i] = totals[i] + (tonumber(values[i]) or 0)
  end
  while next_window <= #ARGV and age + 1 == tonumber(ARGV[next_window]) * per_minute do
    -- A time is averaged over the answered requests that had it.
    local answered = totals[1] + totals[2]
    windows[#windows + 1] = {totals[1], totals[2], totals[3],
      totals[4], answered - totals[5], totals[6], answered - totals[7]}
    next_window = next_window + 1
  end
end
return windows
