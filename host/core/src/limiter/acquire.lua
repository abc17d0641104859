-- Reserves call slots from a backend's token bucket and, optionally, users'
-- buckets: one call for every request an instance has waiting, each answered
-- as if it had come alone, in order, at the same instant. Time comes from
-- Redis so every instance shares one clock.
--
-- KEYS[1] backend state (hash)
-- KEYS[2] the operator's rate (hash: rate, capacity), which replaces ARGV[1..2] while set
-- KEYS[2 + i] request i's user bucket (hash; read only in modes "both" and "user")
-- ARGV[1] configured rate (tokens/s)   ARGV[2] capacity
-- ARGV[3] recovery quiet (us)  ARGV[4] recovery interval (us)
-- ARGV[5] recovery step (fraction of the rate regained per interval)
-- ARGV[6] user rate (tokens/s)  ARGV[7] user capacity   ARGV[8] state ttl (ms)
-- ARGV[9] display name of the backend
-- ARGV[10] allowance wanted: tokens the instance would take ahead of its
--          checks (0: none), each to be spent within ARGV[11] us
-- ARGV[12] tokens of its last allowance it did not spend, given back
-- From ARGV[13], three per request:
--   mode: "both" | "backend" | "user" | "peek"
--   max wait in us: a reservation that would wait longer is not made
--   expected generation, or -1. When it equals the current generation the
--   caller's earlier reservation still stands (no 429 since): confirm it.
--
-- Backend hash fields: tokens, ts (us the tokens were computed for; in the future
-- during a cool-down), gen (bumped by every 429/403 that starts or extends a
-- cool-down), adapted (effective rate while below the configured one), floor_rate
-- + quiet_from (where recovery starts from), counters granted/waits/waited_us.
--
-- An allowance is taken only from a bucket with tokens to spare: no
-- cool-down, no lowered rate, at least half the capacity left after it, and
-- no more than the rate refills within the time it may be spent in. A slow
-- backend (under 200 calls/s for 10 ms) never gets one, and every call of
-- it is paced here one by one. Its tokens count as granted until given back.
--
-- Reply: { allowance granted (tokens), gen, rate, { per request } }, per request
--   { status, wait_us, tokens, rate, gen, rate_changed, cooldown_us }
--   status 1 = reserved: call after wait_us (0 = now)
--          2 = confirmed: the earlier reservation stands, call now
--          3 = user token reserved: wait wait_us, then ask again in mode "backend"
--          0 = refused: the wait (wait_us) exceeds the caller's budget; nothing taken
--          4 = peek: nothing taken
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cfg_rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local user_rate = tonumber(ARGV[6])
local user_cap = tonumber(ARGV[7])
local ttl = tonumber(ARGV[8])
-- A rate an operator set (SetRate) holds on every instance until cleared.
local set = redis.call('HMGET', KEYS[2], 'rate', 'capacity')
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
  local since = now - (quiet_from + tonumber(ARGV[3]))
  if since >= 0 then
    local steps = math.floor(since / tonumber(ARGV[4])) + 1
    local recovered = math.min(cfg_rate, floor_rate + steps * tonumber(ARGV[5]) * cfg_rate)
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

-- What the requests took from the backend, written once after them all.
-- Tokens given back were counted as granted when taken.
local returned = tonumber(ARGV[12])
local granted, waits, waited_us = -returned, 0, 0
tokens = math.min(capacity, tokens + returned)

local function reply(status, wait, shown_tokens)
  return {status, wait, fmt(math.max(0, shown_tokens)), fmt(rate), gen, rate_changed, cooldown}
end

-- The backend token is taken: `after` is what it leaves.
local function take(after, wait)
  tokens = after
  granted = granted + 1
  if wait > 0 then
    waits = waits + 1
    waited_us = waited_us + wait
  end
end

local function save_user(key, left, uts)
  redis.call('HSET', key, 'tokens', fmt(left), 'ts', string.format('%d', uts))
  redis.call('PEXPIRE', key, ttl)
end

local function answer(mode, max_wait, expected_gen, user_key)
  if mode == 'peek' then
    local shown = tokens
    if ts > now then shown = 0 end
    return reply(4, 0, shown)
  end

  if expected_gen >= 0 and expected_gen == gen and mode == 'backend' then
    return reply(2, 0, tokens)
  end

  local before = tokens
  -- The user's bucket first: a user who must wait holds no backend token meanwhile.
  if mode == 'both' or mode == 'user' then
    local u = redis.call('HMGET', user_key, 'tokens', 'ts')
    local ut, uts = refill(tonumber(u[1]) or user_cap, tonumber(u[2]) or now, user_rate, user_cap)
    local u_after, u_wait = wait_for(ut, uts, user_rate, 1)
    if u_wait > max_wait then
      return reply(0, u_wait, before)
    end
    if u_wait > 0 or mode == 'user' then
      save_user(user_key, u_after, uts)
      if mode == 'user' then return reply(1, u_wait, before) end
      return reply(3, u_wait, before)
    end
    -- The user may call now: take the backend token too, or neither.
    local after, wait = wait_for(tokens, ts, rate, 1)
    if wait > max_wait then return reply(0, wait, before) end
    save_user(user_key, u_after, uts)
    take(after, wait)
    return reply(1, wait, before)
  end

  local after, wait = wait_for(tokens, ts, rate, 1)
  if wait > max_wait then
    return reply(0, wait, before)
  end
  take(after, wait)
  return reply(1, wait, before)
end

local replies = {}
local request = 1
for at = 13, #ARGV, 3 do
  replies[request] = answer(ARGV[at], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]),
    KEYS[2 + request])
  request = request + 1
end

local allowance = 0
if tonumber(ARGV[10]) > 0 and ts <= now and rate >= cfg_rate then
  local refilled = math.floor(rate * tonumber(ARGV[11]) / 1000000)
  allowance = math.min(tonumber(ARGV[10]), refilled, math.floor(tokens - capacity / 2))
  if allowance >= 2 then
    tokens = tokens - allowance
    granted = granted + allowance
  else
    allowance = 0
  end
end

-- The bucket as the requests left it; the `granted` count moves in the same
-- HSET (it was read with the state: one command fewer than an HINCRBY).
if granted ~= 0 then
  redis.call('HSET', KEYS[1], 'tokens', fmt(tokens), 'ts', string.format('%d', ts), 'name', ARGV[9],
    'granted', string.format('%d', (tonumber(h[7]) or 0) + granted))
else
  redis.call('HSET', KEYS[1], 'tokens', fmt(tokens), 'ts', string.format('%d', ts), 'name', ARGV[9])
end
redis.call('PEXPIRE', KEYS[1], ttl)
if waits > 0 then
  redis.call('HINCRBY', KEYS[1], 'waits', waits)
  redis.call('HINCRBY', KEYS[1], 'waited_us', waited_us)
end
return {allowance, gen, fmt(rate), replies}
