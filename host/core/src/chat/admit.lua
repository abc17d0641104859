-- Lets a user into a conversation: a member is let in; a conversation that
-- does not exist yet (no members, no frames) is claimed, its first user
-- becoming its first member; anyone else is kept out. One step, so two users
-- racing to open a new conversation cannot both claim it.
-- KEYS[1] members (a set of user ids)   KEYS[2] conversation stream
-- ARGV[1] user id
-- Returns 1 when the user is (now) a member, 0 when kept out.
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  return 1
end
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SADD', KEYS[1], ARGV[1])
  return 1
end
return 0
