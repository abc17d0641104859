-- Makes one stored version the active version of a handler, atomically: the
-- active pointer, the cluster-wide generation and the activation history change
-- together, and every instance is told (Pub/Sub; instances also poll the
-- generation, so a lost message only delays the switch).
-- Returns {'activated', previous version or '', generation}
--         {'unchanged', version, generation}   already active
--         {'kept', active version, generation} ARGV[6] = '1' and one was active
--         {'missing'}                          no such stored version
-- KEYS[1] active hash (name -> version)   KEYS[2] generation counter
-- KEYS[3] the handler's versions hash     KEYS[4] the handler's history list
-- KEYS[5] the version's component bytes
-- ARGV[1] handler name   ARGV[2] version   ARGV[3] now (ms)   ARGV[4] who
-- ARGV[5] action (deploy, rollback, seed, watch)   ARGV[6] '1': only if none is active
-- ARGV[7] Pub/Sub channel   ARGV[8] history entries kept
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 0 or redis.call('EXISTS', KEYS[5]) == 0 then
  return {'missing'}
end
local generation = tonumber(redis.call('GET', KEYS[2]) or '0')
local previous = redis.call('HGET', KEYS[1], ARGV[1])
if previous and ARGV[6] == '1' then
  return {'kept', previous, generation}
end
if previous == ARGV[2] then
  return {'unchanged', previous, generation}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
generation = redis.call('INCR', KEYS[2])
redis.call('LPUSH', KEYS[4], cjson.encode({
  version = ARGV[2], previous = previous or cjson.null, at = tonumber(ARGV[3]),
  by = ARGV[4], action = ARGV[5], generation = generation,
}))
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[8]) - 1)
publish(ARGV[7], generation)
return {'activated', previous or '', generation}
