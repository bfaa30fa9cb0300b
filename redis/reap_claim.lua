-- Claim daemons of one bucket whose grace period is over and who have no
-- live entry, so exactly one pod cleans up after each. A claim is a lease
-- too: the score is pushed ARGV[2] ms ahead, so if the claiming pod dies
-- another pod retries.
-- KEYS[1] reap schedule of the bucket  ARGV[1] daemon hash prefix of the
-- same bucket (its hash tag keeps every key built here in KEYS[1]'s slot)
-- ARGV[2] claim ms  ARGV[3] batch size
-- Returns a flat list: id, claim score, id, claim score, ...
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(due) do
  if redis.call('EXISTS', ARGV[1] .. id) == 0 then
    local till = now + tonumber(ARGV[2])
    redis.call('ZADD', KEYS[1], till, id)
    table.insert(out, id)
    table.insert(out, tostring(till))
  end
end
return out
