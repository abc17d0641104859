-- Removes the dead letter of one job, found through the queue's index.
-- Returns 1 when there was one, 0 otherwise.
-- KEYS[1] dead-letter stream   KEYS[2] its index
-- ARGV[1] job id
-- (dead_letters.lua is prepended.)
local found = find_dead_letter(KEYS[1], KEYS[2], ARGV[1])
if not found then
  return 0
end
drop_dead_letter(KEYS[1], KEYS[2], found[1], ARGV[1])
return 1
