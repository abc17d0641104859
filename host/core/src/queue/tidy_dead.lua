-- Brings a queue's dead letters in line, one page per call from the oldest so
-- that a long stream never stalls Redis: letters over the cap (lowered since
-- they were written) leave, oldest first, and the others are indexed (older
-- versions of spool wrote no index). Of two letters of one job the newer stays,
-- as add_dead_letter keeps it.
-- Returns the id to continue after, or '' at the end of the stream.
-- KEYS[1] dead-letter stream   KEYS[2] its index
-- ARGV[1] start after this entry id ('-': from the first)   ARGV[2] page size
-- ARGV[3] dead letters kept
-- (dead_letters.lua is prepended.)

-- Whether stream entry id `a` (`ms-seq`) is older than `b`.
local function entry_id_before(a, b)
  local a_ms, a_seq = string.match(a, '^(%d+)-(%d+)$')
  local b_ms, b_seq = string.match(b, '^(%d+)-(%d+)$')
  if #a_ms ~= #b_ms then return #a_ms < #b_ms end
  if a_ms ~= b_ms then return a_ms < b_ms end
  return tonumber(a_seq) < tonumber(b_seq)
end

local start = ARGV[1]
if start ~= '-' then start = '(' .. start end
local page = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', ARGV[2])
local cap = tonumber(ARGV[3])
for _, entry in ipairs(page) do
  local id = entry_field(entry[2], 'job')
  if redis.call('XLEN', KEYS[1]) > cap then
    drop_dead_letter(KEYS[1], KEYS[2], entry[1], id)
  elseif id then
    local indexed = find_dead_letter(KEYS[1], KEYS[2], id)
    if not indexed then
      redis.call('HSET', KEYS[2], id, entry[1])
    elseif indexed[1] ~= entry[1] then
      if entry_id_before(indexed[1], entry[1]) then
        drop_dead_letter(KEYS[1], KEYS[2], indexed[1], id)
        redis.call('HSET', KEYS[2], id, entry[1])
      else
        drop_dead_letter(KEYS[1], KEYS[2], entry[1], nil)
      end
    end
  end
end
if #page < tonumber(ARGV[2]) then
  return ''
end
return page[#page][1]
