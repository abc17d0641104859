-- Enqueues a batch of jobs of one queue atomically, all or nothing: each job's
-- hash, stream entry and first event, then one wake-up for idle workers.
-- An id that names a job of this queue (and of this owner) is a repeat, like
-- on the single route: that item queues nothing and answers 'duplicate' (so
-- does a later item of the batch under an id an earlier one took). An id
-- taken by another queue or owner refuses the batch ({'taken', index}), and
-- so does a class stream the batch would fill past max waiting ({'full', 0}).
-- KEYS[3i-2] item i's class stream   KEYS[3i-1] its job hash   KEYS[3i] its event stream
-- ARGV[1] max waiting   ARGV[2] now (ms)   ARGV[3] wake channel   ARGV[4] queue name
-- ARGV[5] event type    ARGV[6] events kept
-- ARGV[7] the owner every repeated id must belong to ('' for any owner)
-- ARGV[8] f, the number of hash fields per job   ARGV[9 .. 8+f] their names
-- then per item: its event data and its f field values (the id first)
local items = #KEYS / 3
local f = tonumber(ARGV[8])
local first_item = 9 + f
local function item_arg(i, k)
  return ARGV[first_item + (i - 1) * (f + 1) + k]
end

local repeated = {}
local taken_here = {}
local adding = {}
for i = 1, items do
  local hash = KEYS[3 * i - 1]
  if taken_here[hash] then
    repeated[i] = true
  elseif redis.call('EXISTS', hash) == 1 then
    local owner = redis.call('HMGET', hash, 'queue', 'user_id')
    if owner[1] ~= ARGV[4] or (ARGV[7] ~= '' and owner[2] ~= ARGV[7]) then
      return {'taken', i}
    end
    repeated[i] = true
  else
    taken_here[hash] = true
    local stream = KEYS[3 * i - 2]
    adding[stream] = (adding[stream] or 0) + 1
  end
end
for stream, count in pairs(adding) do
  if redis.call('XLEN', stream) + count > tonumber(ARGV[1]) then
    return {'full', 0}
  end
end

local entries = {}
local queued = 0
for i = 1, items do
  if repeated[i] then
    entries[i] = 'duplicate'
  else
    local hash = KEYS[3 * i - 1]
    local entry = redis.call('XADD', KEYS[3 * i - 2], '*', 'job', item_arg(i, 1))
    local fields = {'entry', entry}
    for k = 1, f do
      fields[2 * k + 1] = ARGV[8 + k]
      fields[2 * k + 2] = item_arg(i, k)
    end
    redis.call('HSET', hash, unpack(fields))
    redis.call('XADD', KEYS[3 * i], 'MAXLEN', '~', ARGV[6], '*',
      'event_type', ARGV[5], 'data', item_arg(i, 0), 'timestamp', ARGV[2])
    entries[i] = entry
    queued = queued + 1
  end
end
if queued > 0 then
  publish(ARGV[3], ARGV[4])
end
return {'queued', entries}
