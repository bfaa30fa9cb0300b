-- Revoke the tool key of a task.
-- KEYS[1] the task's index entry  ARGV[1] key entry prefix
-- Returns 1 when a key was revoked.
local hash = redis.call('GET', KEYS[1])
if not hash then
  return 0
end
redis.call('DEL', ARGV[1] .. hash, KEYS[1])
return 1
