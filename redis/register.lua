-- Register the newest connection of a daemon, replacing any older one.
-- KEYS[1] daemon hash  KEYS[2] reap schedule of its bucket (same slot)
-- ARGV[1] daemon id  ARGV[2] pod  ARGV[3] connection id  ARGV[4] lease ms
-- ARGV[5] grace ms  ARGV[6] pod channel prefix of the bucket (same slot)
-- ARGV[7] PUBLISH or SPUBLISH  ARGV[8..] field, value, ...
-- Returns the replaced connection id, or false.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local old = redis.call('HMGET', KEYS[1], 'pod', 'conn')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'pod', ARGV[2], 'conn', ARGV[3], unpack(ARGV, 8))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], now + ARGV[4] + ARGV[5], ARGV[1])
if old[2] and old[2] ~= ARGV[3] then
  -- Tell the pod holding the older socket to close it (fencing by conn id).
  redis.call(ARGV[7], ARGV[6] .. old[1], 'K|' .. ARGV[1] .. '|' .. old[2])
  return old[2]
end
return false
