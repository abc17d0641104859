-- Design C's one stream per task: every event of a follow-up job (a later
-- stage) is also written to its root job's stream, with a `job` field naming
-- the stage, so a client watching the root's id sees every stage. A
-- follow-up's id is `{root}.{n}[.{m}...]` (worker/follow_up.rs; no client id
-- has a dot), so the root is the id up to its first dot: a root job copies
-- nothing. A root whose stream is gone (its retention ran out) gets nothing,
-- so no stream is created without its expiry. Prepended to the scripts that
-- write job events.
local function copy_to_root(events_key, id, max_events, ...)
  local root = string.match(id, '^([^.]+)%.')
  if not root then
    return
  end
  local root_key = string.sub(events_key, 1, #events_key - #id) .. root
  if redis.call('EXISTS', root_key) == 0 then
    return
  end
  redis.call('XADD', root_key, 'MAXLEN', '~', max_events, '*', 'job', id, ...)
end
