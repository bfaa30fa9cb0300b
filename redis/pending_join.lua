-- A pod starts waiting for a daemon's answer about one task.
-- KEYS[1] pending set of waiting pods  ARGV[1] pod id  ARGV[2] ttl ms
-- Returns 1 when nobody was waiting yet (the caller sends the command),
-- 0 when a command for it is already in flight (the caller only waits).
local first = redis.call('EXISTS', KEYS[1]) == 0
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if first then
  return 1
end
return 0
