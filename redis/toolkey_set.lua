-- Register a task's tool key, replacing the task's previous key if any.
-- KEYS[1] key entry (by hash)  KEYS[2] the task's index entry
-- ARGV[1] entry JSON  ARGV[2] key hash  ARGV[3] ttl ms  ARGV[4] key entry prefix
local old = redis.call('GET', KEYS[2])
if old and old ~= ARGV[2] then
  redis.call('DEL', ARGV[4] .. old)
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
