-- Relays one event of a bot job into its conversation, exactly once: only
-- while this instance holds the job's relay lease, and only an event after
-- the last one relayed. Appends and publishes like append.lua, records the
-- event as relayed and renews the lease. (Once the job's last event is
-- relayed, the host drops the relay's lease, cursor and registry entry: a
-- relay taken over before that finds nothing after the cursor.)
-- Returns the entry id, 'skip' for an event already relayed, 'lost' without
-- the lease.
-- KEYS[1] relay lease   KEYS[2] conversation stream   KEYS[3] relay cursors hash
-- ARGV[1] lease holder   ARGV[2] job id   ARGV[3] job event id
-- ARGV[4] frame (JSON object without `id`)   ARGV[5] entries kept
-- ARGV[6] Pub/Sub channel   ARGV[7] lease ms
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 'lost'
end
local function position(id)
  local ms, seq = string.match(id or '0-0', '^(%d+)-(%d+)$')
  return tonumber(ms or 0), tonumber(seq or 0)
end
local done_ms, done_seq = position(redis.call('HGET', KEYS[3], ARGV[2]))
local ms, seq = position(ARGV[3])
if ms < done_ms or (ms == done_ms and seq <= done_seq) then
  return 'skip'
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'frame', ARGV[4])
redis.call('PUBLISH', ARGV[6], '{"id":"' .. id .. '",' .. string.sub(ARGV[4], 2))
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
return id
