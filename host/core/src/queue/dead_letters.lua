-- Dead letters, shared by the scripts that write them (finish, replay, purge):
-- Rust prepends this file to each of them, as Redis scripts cannot import.
-- A queue's dead letters are a stream (fields `job`, `failed_at`, `record`: a
-- snapshot of the job hash) and an index, a hash job id -> entry id, so that
-- one letter is found without reading the stream. A job has at most one
-- letter per queue. The index may name an entry that is gone or belongs to
-- another job (trimmed meanwhile, written by hand, an older version of spool):
-- every lookup checks the entry, and drops an index entry that does not hold.

-- The value of `name` in a stream entry's flat field/value list.
local function entry_field(fields, name)
  for i = 1, #fields - 1, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end

-- The letter of job `id`, as {entry id, fields}, or nil.
local function find_dead_letter(stream, index, id)
  local entry_id = redis.call('HGET', index, id)
  if not entry_id then return nil end
  local entry = redis.call('XRANGE', stream, entry_id, entry_id)[1]
  if not entry or entry_field(entry[2], 'job') ~= id then
    redis.call('HDEL', index, id)
    return nil
  end
  return entry
end

-- Removes one letter and, when it points there, its index entry.
local function drop_dead_letter(stream, index, entry_id, id)
  redis.call('XDEL', stream, entry_id)
  if id and redis.call('HGET', index, id) == entry_id then
    redis.call('HDEL', index, id)
  end
end

-- Appends the letter of job `id`, replacing its previous one, and keeps at most
-- `cap` letters: the oldest leave with their index entries, at most 100 per
-- call so that lowering the cap never stalls Redis (it converges over the next
-- failures). Returns the new entry id.
local function add_dead_letter(stream, index, id, failed_at, snapshot, cap)
  local previous = find_dead_letter(stream, index, id)
  if previous then drop_dead_letter(stream, index, previous[1], id) end
  local over = redis.call('XLEN', stream) - tonumber(cap) + 1
  if over > 0 then
    for _, old in ipairs(redis.call('XRANGE', stream, '-', '+', 'COUNT', math.min(over, 100))) do
      drop_dead_letter(stream, index, old[1], entry_field(old[2], 'job'))
    end
  end
  local entry_id = redis.call('XADD', stream, '*', 'job', id, 'failed_at', failed_at, 'record', snapshot)
  redis.call('HSET', index, id, entry_id)
  return entry_id
end

