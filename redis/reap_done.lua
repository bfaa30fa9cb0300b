-- The cleanup claimed with reap_claim.lua is finished: forget the daemon,
-- unless it reconnected meanwhile (its score changed).
-- KEYS[1] reap schedule  ARGV[1] daemon id  ARGV[2] claim score
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) == tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
