-- A daemon's answer arrived: hand it to every pod waiting for it, once.
-- KEYS[1] pending set  ARGV[1] pod channel prefix  ARGV[2] message
-- Returns how many pods were waiting.
local pods = redis.call('SMEMBERS', KEYS[1])
if #pods == 0 then
  return 0
end
redis.call('DEL', KEYS[1])
for _, pod in ipairs(pods) do
  redis.call('PUBLISH', ARGV[1] .. pod, ARGV[2])
end
return #pods
