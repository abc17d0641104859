-- Deletes messages of one session with their text, event streams and
-- separately stored content, and their entries in the session index, atomically, so the
-- index never names a deleted message nor misses a live one. Index entries of
-- messages that already expired are dropped too. The session itself goes when
-- asked ('all') or, in the global cleanup ('older'), when it is empty and idle
-- since before the cutoff; a session's own cleanup ('messages') keeps it.
-- Returns {messages deleted, 1 if the session was deleted else 0}.
-- KEYS[1] session message index (zset)   KEYS[2] session hash
-- KEYS[3] index of all sessions (zset)
-- ARGV[1] 'all', 'older' or 'messages'   ARGV[2] cutoff (ms; 'older' and 'messages'
--   delete messages created before it)
-- ARGV[3] message key prefix   ARGV[4] this session's stream key prefix
-- ARGV[5] content key prefix   ARGV[6] session id
local index, mode, cutoff = KEYS[1], ARGV[1], tonumber(ARGV[2])

local function delete_message(id)
  local message = ARGV[3] .. id
  local order = redis.call('HGET', message, 'block_order') or ''
  for block in string.gmatch(order, '[^,]+') do
    redis.call('DEL', ARGV[5] .. block)
  end
  redis.call('DEL', message, message .. ':text', ARGV[4] .. id)
  redis.call('ZREM', index, id)
end

local deleted = 0
local doomed
if mode == 'all' then
  doomed = redis.call('ZRANGE', index, 0, -1)
else
  doomed = redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. cutoff)
end
for _, id in ipairs(doomed) do
  if redis.call('EXISTS', ARGV[3] .. id) == 1 then deleted = deleted + 1 end
  delete_message(id)
end

-- Entries whose message expired on its own (its TTL) leave the index too.
for _, id in ipairs(redis.call('ZRANGE', index, 0, -1)) do
  if redis.call('EXISTS', ARGV[3] .. id) == 0 then delete_message(id) end
end

local session_deleted = 0
local idle_since = tonumber(redis.call('HGET', KEYS[2], 'updated_at') or '0')
if mode == 'all' or (mode == 'older' and redis.call('ZCARD', index) == 0 and idle_since < cutoff) then
  redis.call('DEL', KEYS[2], index)
  redis.call('ZREM', KEYS[3], ARGV[6])
  session_deleted = 1
end
return {deleted, session_deleted}
