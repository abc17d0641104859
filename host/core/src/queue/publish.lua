-- Pub/Sub from a script. A channel in a hash tag is a shard channel, the
-- Redis Cluster kind: SPUBLISH, delivered by the master of the channel's
-- slot (the script's own, as the tag is its keys'); any other channel is a
-- classic one (PUBLISH), as on a single server. Prepended to the scripts
-- that announce work or a cancel.
local function publish(channel, message)
  if string.find(channel, '{', 1, true) then
    return redis.call('SPUBLISH', channel, message)
  end
  return redis.call('PUBLISH', channel, message)
end
