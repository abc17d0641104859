-- Reserves a call slot from a backend's token bucket and, optionally, a user's.
-- One round trip; time comes from Redis so every instance shares one clock.
--
-- KEYS[1] backend state (hash)   KEYS[2] user bucket (hash; unused in mode "backend")
-- KEYS[3] the operator's rate (hash: rate, capacity), which replaces ARGV[2..3] while set
-- ARGV[1]  mode: "both" | "backend" | "user" | "peek"
-- ARGV[2]  configured rate (tokens/s)       ARGV[3] capacity
-- ARGV[4]  max wait in us: a reservation that would wait longer is not made
-- ARGV[5]  expected generation, or -1. When it equals the current generation
--          the caller's earlier reservation still stands (no 429 since): confirm it.
-- ARGV[6]  recovery quiet (us)  ARGV[7] recovery interval (us)
-- ARGV[8]  recovery step (fraction of the rate regained per interval)
-- ARGV[9]  user rate (tokens/s)  ARGV[10] user capacity   ARGV[11] state ttl (ms)
-- ARGV[12] display name of the backend
--
-- Backend hash fields: tokens, ts (us the tokens were computed for; in the future
-- during a cool-down), gen (bumped by every 429/403 that starts or extends a
-- cool-down), adapted (effective rate while below the configured one), floor_rate
-- + quiet_from (where recovery starts from), counters granted/waits/waited_us.
--
-- Reply: { status, wait_us, tokens, rate, gen, rate_changed, cooldown_us }
--   status 1 = reserved: call after wait_us (0 = now)
--          2 = confirmed: the earlier reservation stands, call now
--          3 = user token reserved: wait wait_us, then ask again in mode "backend"
--          0 = refused: the wait (wait_us) exceeds the caller's budget; nothing taken
--          4 = peek: nothing taken
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local mode = ARGV[1]
local cfg_rate = tonumber(ARGV[2])
local capacity = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local expected_gen = tonumber(ARGV[5])
local ttl = tonumber(ARGV[11])
-- A rate an operator set (SetRate) holds on every instance until cleared.
local set = redis.call('HMGET', KEYS[3], 'rate', 'capacity')
cfg_rate = tonumber(set[1]) or cfg_rate
capacity = tonumber(set[2]) or capacity

local function fmt(x) return string.format('%.17g', x) end

-- The backend's effective rate, recovering lazily: from `quiet_from` on, it
-- regains `step` per `interval` until it is back at the configured rate.
local h = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'gen', 'adapted', 'floor_rate', 'quiet_from', 'granted')
local gen = tonumber(h[3]) or 0
local rate = cfg_rate
local rate_changed = 0
local adapted = tonumber(h[4])
if adapted then
  rate = math.min(adapted, cfg_rate)
  local floor_rate = tonumber(h[5]) or rate
  local quiet_from = tonumber(h[6]) or now
  local since = now - (quiet_from + tonumber(ARGV[6]))
  if since >= 0 then
    local steps = math.floor(since / tonumber(ARGV[7])) + 1
    local recovered = math.min(cfg_rate, floor_rate + steps * tonumber(ARGV[8]) * cfg_rate)
    if recovered > rate then
      rate = recovered
      rate_changed = 1
    end
  end
end

local function refill(tokens, ts, r, cap)
  if now > ts then
    tokens = tokens + (now - ts) * r / 1000000
    ts = now
  end
  return math.min(tokens, cap), ts
end

-- Wait until `cost` tokens taken from `tokens` (valid at `ts`) are covered.
local function wait_for(tokens, ts, r, cost)
  local after = tokens - cost
  local wait = ts - now
  if after < 0 then wait = wait + (-after) * 1000000 / r end
  return after, math.max(0, math.ceil(wait))
end

local tokens, ts = refill(tonumber(h[1]) or capacity, tonumber(h[2]) or now, rate, capacity)
local cooldown = math.max(0, ts - now)

if rate_changed == 1 then
  if rate >= cfg_rate then
    redis.call('HDEL', KEYS[1], 'adapted', 'floor_rate')
  else
    redis.call('HSET', KEYS[1], 'adapted', fmt(rate))
  end
end

-- `granted`: the slot was given, so the counter moves in the same HSET (the
-- count was read with the state: one command fewer than an HINCRBY per call).
local function save_backend(left, granted)
  if granted then
    redis.call('HSET', KEYS[1], 'tokens', fmt(left), 'ts', string.format('%d', ts), 'name', ARGV[12],
      'granted', string.format('%d', (tonumber(h[7]) or 0) + 1))
  else
    redis.call('HSET', KEYS[1], 'tokens', fmt(left), 'ts', string.format('%d', ts), 'name', ARGV[12])
  end
  redis.call('PEXPIRE', KEYS[1], ttl)
end

local function reply(status, wait, shown_tokens)
  return {status, wait, fmt(math.max(0, shown_tokens)), fmt(rate), gen, rate_changed, cooldown}
end

if mode == 'peek' then
  save_backend(tokens)
  local shown = tokens
  if ts > now then shown = 0 end
  return reply(4, 0, shown)
end

if expected_gen >= 0 and expected_gen == gen and mode == 'backend' then
  save_backend(tokens)
  return reply(2, 0, tokens)
end

-- The user's bucket first: a user who must wait holds no backend token meanwhile.
if mode == 'both' or mode == 'user' then
  local user_rate = tonumber(ARGV[9])
  local user_cap = tonumber(ARGV[10])
  local u = redis.call('HMGET', KEYS[2], 'tokens', 'ts')
  local ut, uts = refill(tonumber(u[1]) or user_cap, tonumber(u[2]) or now, user_rate, user_cap)
  local u_after, u_wait = wait_for(ut, uts, user_rate, 1)
  if u_wait > max_wait then
    return reply(0, u_wait, tokens)
  end
  if u_wait > 0 or mode == 'user' then
    redis.call('HSET', KEYS[2], 'tokens', fmt(u_after), 'ts', string.format('%d', uts))
    redis.call('PEXPIRE', KEYS[2], ttl)
    if mode == 'user' then return reply(1, u_wait, tokens) end
    return reply(3, u_wait, tokens)
  end
  -- The user may call now: take the backend token too, or neither.
  local after, wait = wait_for(tokens, ts, rate, 1)
  if wait > max_wait then return reply(0, wait, tokens) end
  redis.call('HSET', KEYS[2], 'tokens', fmt(u_after), 'ts', string.format('%d', uts))
  redis.call('PEXPIRE', KEYS[2], ttl)
  save_backend(after, true)
  if wait > 0 then
    redis.call('HINCRBY', KEYS[1], 'waits', 1)
    redis.call('HINCRBY', KEYS[1], 'waited_us', wait)
  end
  return reply(1, wait, tokens)
end

local after, wait = wait_for(tokens, ts, rate, 1)
if wait > max_wait then
  save_backend(tokens)
  return reply(0, wait, tokens)
end
save_backend(after, true)
if wait > 0 then
  redis.call('HINCRBY', KEYS[1], 'waits', 1)
  redis.call('HINCRBY', KEYS[1], 'waited_us', wait)
end
return reply(1, wait, tokens)
