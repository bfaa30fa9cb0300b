-- Deliver a command to the pod holding the daemon's current connection, in
-- one round trip.
-- KEYS[1] daemon hash  ARGV[1] pod channel prefix of its bucket (same slot)
-- ARGV[2] PUBLISH or SPUBLISH  ARGV[3] daemon id  ARGV[4] payload
-- Returns -1 when no entry exists, else the receiver count (0: the holding
-- pod is gone).
local v = redis.call('HMGET', KEYS[1], 'pod', 'conn')
if not v[1] or not v[2] then
  return -1
end
return redis.call(ARGV[2], ARGV[1] .. v[1], 'C|' .. ARGV[3] .. '|' .. v[2] .. '|' .. ARGV[4])
