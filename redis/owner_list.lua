-- The daemons of one owner whose listing lease has not passed (pruning the
-- others). The caller reads each daemon's entry, which is authoritative.
-- KEYS[1] owner index (zset)
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
