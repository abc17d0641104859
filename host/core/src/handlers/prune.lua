-- Prunes a handler's stored versions: keeps the `keep` most recently uploaded,
-- the active one, the one a rollback would return to (the version active
-- before the latest activation), and every version a queue pins (pins held
-- within the hold window); deletes the bytes and metadata of the rest.
-- Without this every deploy, and every rebuild under `--watch`, adds a
-- component (megabytes) to Redis for good.
-- Returns the pruned versions as {version, sha256, version, sha256, ...}.
-- KEYS[1] the handler's versions hash   KEYS[2] active hash (name -> version)
-- KEYS[3] the handler's pins (zset version -> last held, ms)
-- KEYS[4] the handler's history list (newest first)
-- ARGV[1] handler name   ARGV[2] versions kept   ARGV[3] component key prefix
-- ARGV[4] pins held since (ms)
local keep = tonumber(ARGV[2])
local raw = redis.call('HGETALL', KEYS[1])
if #raw / 2 <= keep then
  return {}
end

local versions = {}
for i = 1, #raw, 2 do
  local ok, meta = pcall(cjson.decode, raw[i + 1])
  -- Metadata this script cannot read is never pruned.
  if ok and type(meta) == 'table' and tonumber(meta.uploadedAt) then
    versions[#versions + 1] = {id = raw[i], at = tonumber(meta.uploadedAt), sha256 = meta.sha256 or ''}
  end
end
-- Newest first; the same order (reversed) as the registry lists versions.
table.sort(versions, function(a, b)
  if a.at ~= b.at then return a.at > b.at end
  return a.id > b.id
end)

local kept = {}
local active = redis.call('HGET', KEYS[2], ARGV[1])
if active then kept[active] = true end
local latest = redis.call('LINDEX', KEYS[4], 0)
if latest then
  local ok, activation = pcall(cjson.decode, latest)
  if ok and type(activation) == 'table' and type(activation.previous) == 'string' then
    kept[activation.previous] = true
  end
end
for _, pinned in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], ARGV[4], '+inf')) do
  kept[pinned] = true
end

local pruned = {}
for index, version in ipairs(versions) do
  if index > keep and not kept[version.id] then
    redis.call('DEL', ARGV[3] .. version.id)
    redis.call('HDEL', KEYS[1], version.id)
    pruned[#pruned + 1] = version.id
    pruned[#pruned + 1] = version.sha256
  end
end
-- Pins no instance held within the window are forgotten.
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[4])
return pruned
