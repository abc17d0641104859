-- Records a batch of outcomes, then claims the next jobs, in one call: a
-- worker that finishes a job asks for its next one with the outcome, as
-- BullMQ's move-to-finished fetches the next job, so a loaded queue pays one
-- call per batch instead of two.
-- The outcomes are recorded exactly as finish.lua records them alone. Then
-- the consumers that asked for a job alone, followed by those whose outcome
-- was recorded (or had lost its job) and that want their next job, get jobs
-- exactly as claim.lua gives them. An outcome that must become a cancel, or
-- failed, claims nothing for its worker: it is recorded again first.
-- Returns {finish results (finish.lua), claim reply (claim.lua)}, where the
-- claim reply is {'none'} when no consumer asked and {'failed', error} when
-- the claim stopped on an error (the outcomes stay recorded).
-- KEYS[1..7] the claim's keys (claim.lua), then 9 per outcome (finish.lua)
-- ARGV[1..7] the claim's arguments   ARGV[8] c, the consumers asking alone
-- ARGV[9..8+c] them   then finish.lua's arguments (the number of outcomes n,
-- and each outcome's)   then n consumers, one per outcome, '' for none
-- (claim.lua and finish.lua, with what they need, are prepended.)
local alone = tonumber(ARGV[8])
local consumers = {unpack(ARGV, 9, 8 + alone)}
local results, next_arg = finish_outcomes(KEYS, 7, ARGV, 9 + alone)
for n, result in ipairs(results) do
  local consumer = ARGV[next_arg + n - 1]
  if consumer ~= '' and (result == 0 or result == 1) then
    consumers[#consumers + 1] = consumer
  end
end
if #consumers == 0 then
  return {results, {'none'}}
end
local ok, claimed = pcall(claim_jobs, KEYS, ARGV, consumers)
if not ok then
  return {results, {'failed', type(claimed) == 'table' and claimed.err or tostring(claimed)}}
end
return {results, claimed}
