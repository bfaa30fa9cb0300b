-- Add or refresh daemons in an owner's listing index, with deadlines from
-- Redis's clock (pods' clocks may differ).
-- KEYS[1] owner index (zset)  ARGV[1] lease ms  ARGV[2..] daemon ids
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + ARGV[1], ARGV[i])
end
return #ARGV - 1
