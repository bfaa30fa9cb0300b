-- A connection ended cleanly: remove its registry entry if it is still the
-- current one, and schedule the reaper after the grace period.
-- KEYS[1] daemon hash  KEYS[2] reap schedule of its bucket (same slot)
-- ARGV[1] daemon id  ARGV[2] connection id  ARGV[3] grace ms
-- Returns 1 when this connection was the current one, else 0.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local conn = redis.call('HGET', KEYS[1], 'conn')
if conn == ARGV[2] then
  redis.call('DEL', KEYS[1])
  redis.call('ZADD', KEYS[2], now + ARGV[3], ARGV[1])
  return 1
end
if not conn then
  -- The entry is already gone (lease lapsed, or Redis lost it): make sure a
  -- reap is scheduled, without moving one that is already due.
  redis.call('ZADD', KEYS[2], 'NX', now + ARGV[3], ARGV[1])
end
return 0
