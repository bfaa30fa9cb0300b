-- Refresh the leases of a batch of a pod's daemons, all of one bucket.
-- KEYS[1] reap schedule of the bucket; KEYS[1+i] daemon hash i (same slot).
-- ARGV[1] lease ms  ARGV[2] grace ms; then per daemon: ARGV[1+2i] id, ARGV[2+2i] conn.
-- Returns per daemon: 1 refreshed, 0 entry missing (expired or Redis lost
-- it: re-register), -1 replaced by a newer connection (close ours).
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local out = {}
for i = 1, #KEYS - 1 do
  local key = KEYS[1 + i]
  local conn = redis.call('HGET', key, 'conn')
  if conn == ARGV[2 + 2 * i] then
    redis.call('PEXPIRE', key, ARGV[1])
    redis.call('ZADD', KEYS[1], now + ARGV[1] + ARGV[2], ARGV[1 + 2 * i])
    out[i] = 1
  elseif conn then
    out[i] = -1
  else
    out[i] = 0
  end
end
return out
