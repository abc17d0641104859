-- Deletes the consumers of a queue's group that hold no pending entries and
-- either are this instance's own (it is stopping) or have not been heard of
-- for `min idle` (their instance is gone: consumer names carry the process, so
-- every start adds new ones). A consumer with pending entries is never
-- deleted, whatever its age: XGROUP DELCONSUMER would drop them from the
-- pending list, where recovery finds the jobs of vanished workers. Deleting an
-- idle consumer of a live worker is harmless: its next read creates it again.
-- Returns the number of consumers deleted.
-- KEYS[1..n] the queue's class streams
-- ARGV[1] group   ARGV[2] min idle (ms)   ARGV[3] this instance's consumer name prefix ('' = none)
local min_idle, prefix, deleted = tonumber(ARGV[2]), ARGV[3], 0
for _, stream in ipairs(KEYS) do
  -- A stream or group lost with Redis' data has no consumers to prune.
  local consumers = redis.pcall('XINFO', 'CONSUMERS', stream, ARGV[1])
  if type(consumers) == 'table' and not consumers.err then
    for _, consumer in ipairs(consumers) do
      local info = {}
      for i = 1, #consumer - 1, 2 do info[consumer[i]] = consumer[i + 1] end
      local mine = prefix ~= '' and string.sub(info.name, 1, #prefix) == prefix
      if info.pending == 0 and (mine or info.idle >= min_idle) then
        redis.call('XGROUP', 'DELCONSUMER', stream, ARGV[1], info.name)
        deleted = deleted + 1
      end
    end
  end
end
return deleted
