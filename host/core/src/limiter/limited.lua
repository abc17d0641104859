-- Records a 429/403 from the backend: stops every instance's calls until the
-- cool-down ends and lowers the effective rate (once per episode).
--
-- KEYS[1] backend state (hash; fields as in acquire.lua)
-- KEYS[2] the operator's rate (hash; its `rate` replaces ARGV[4] while set)
-- ARGV[1] generation the failed call was reserved under
-- ARGV[2] cool-down in us (the server's Retry-After, or the default)
-- ARGV[3] HTTP status (429 or 403)   ARGV[4] configured rate   ARGV[5] decrease factor
-- ARGV[6] minimum rate               ARGV[7] state ttl (ms)    ARGV[8] display name
--
-- A report from a call reserved before the current generation belongs to an
-- episode already handled: it may extend the cool-down but does not lower the
-- rate again, so N calls in flight hitting one 429 storm halve the rate once.
-- Starting or extending a cool-down bumps the generation, which voids every
-- reservation made before it (their holders re-reserve when they wake), and
-- leaves one token for the moment the cool-down ends.
--
-- Reply: { lowered (0/1), rate, cooldown_until_us - now, gen }
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local call_gen = tonumber(ARGV[1])
local until_ = now + tonumber(ARGV[2])
local cfg_rate = tonumber(redis.call('HGET', KEYS[2], 'rate')) or tonumber(ARGV[4])

local function fmt(x) return string.format('%.17g', x) end

local h = redis.call('HMGET', KEYS[1], 'ts', 'gen', 'adapted')
local ts = tonumber(h[1]) or now
local gen = tonumber(h[2]) or 0
local rate = math.min(tonumber(h[3]) or cfg_rate, cfg_rate)

redis.call('HINCRBY', KEYS[1], 'limited_' .. ARGV[3], 1)
local lowered = 0
if call_gen == gen then
  rate = math.max(tonumber(ARGV[6]), rate * tonumber(ARGV[5]))
  redis.call('HSET', KEYS[1], 'adapted', fmt(rate), 'floor_rate', fmt(rate))
  lowered = 1
end
if lowered == 1 or until_ > ts then
  gen = gen + 1
  ts = math.max(ts, until_)
  redis.call('HSET', KEYS[1], 'gen', gen, 'tokens', '1', 'ts', string.format('%d', ts),
    'quiet_from', string.format('%d', ts), 'name', ARGV[8])
end
redis.call('HSET', KEYS[1], 'last_limited_us', string.format('%d', now))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[7]))
return {lowered, fmt(rate), ts - now, gen}
