-- Refresh the leases of a batch of a pod's daemons.
-- KEYS[1] reap schedule; then per daemon i (1-based): KEYS[2i] daemon hash,
-- KEYS[2i+1] owner index.
-- ARGV[1] lease ms  ARGV[2] grace ms; then per daemon: ARGV[1+2i] id, ARGV[2+2i] conn.
-- Returns per daemon: 1 refreshed, 0 entry missing (expired or Redis lost
-- it: re-register), -1 replaced by a newer connection (close ours).
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local out = {}
local n = (#KEYS - 1) / 2
for i = 1, n do
  local key = KEYS[2 * i]
  local id = ARGV[1 + 2 * i]
  local conn = redis.call('HGET', key, 'conn')
  if conn == ARGV[2 + 2 * i] then
    redis.call('PEXPIRE', key, ARGV[1])
    redis.call('ZADD', KEYS[2 * i + 1], now + ARGV[1], id)
    redis.call('ZADD', KEYS[1], now + ARGV[1] + ARGV[2], id)
    out[i] = 1
  elseif conn then
    out[i] = -1
  else
    out[i] = 0
  end
end
return out
