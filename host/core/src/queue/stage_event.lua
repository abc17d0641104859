-- Design C's one stream per task: every event of a follow-up job (a later
-- stage) is also written to its root job's stream, with a `job` field naming
-- the stage, so a client watching the root's id sees every stage. A
-- follow-up's id is `{root}.{n}[.{m}...]` (worker/follow_up.rs; no client id
-- has a dot), so the root is the id up to its first dot: a root job copies
-- nothing. A root whose stream is gone (its retention ran out) gets nothing,
-- so no stream is created without its expiry. Prepended to the scripts that
-- write job events.
-- A plain find, not a pattern: `string.match(id, '^([^.]+)%.')` backtracked
-- over every root id, and Lua's matcher showed as 4 % of a loaded Redis' CPU.
local function copy_to_root(events_key, id, max_events, ...)
  local dot = string.find(id, '.', 1, true)
  if not dot or dot == 1 then
    return
  end
  local root = string.sub(id, 1, dot - 1)
  local root_key = string.sub(events_key, 1, #events_key - #id) .. root
  if redis.call('EXISTS', root_key) == 0 then
    return
  end
  redis.call('XADD', root_key, 'MAXLEN', '~', max_events, '*', 'job', id, ...)
end
