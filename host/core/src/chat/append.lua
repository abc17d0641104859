-- Appends one frame to a conversation and publishes it, with its stream id,
-- on the conversation's Pub/Sub channel in the same step: the stream orders
-- the conversation, so live copies arrive in stream order and can be told
-- apart by id. Returns the entry's id.
-- KEYS[1] conversation stream
-- ARGV[1] frame (a JSON object without `id`)   ARGV[2] entries kept (MAXLEN ~)
-- ARGV[3] Pub/Sub channel
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'frame', ARGV[1])
redis.call('PUBLISH', ARGV[3], '{"id":"' .. id .. '",' .. string.sub(ARGV[1], 2))
return id
