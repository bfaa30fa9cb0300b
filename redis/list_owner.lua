-- The live registry entries of one owner.
-- KEYS[1] owner index  ARGV[1] daemon hash key prefix (ends in ':')
-- Returns a flat list: id, {field, value, ...}, id, {...}, ...
-- (Builds hash keys itself: single-node and Sentinel only; the cluster mode
-- keeps an owner's keys in one slot with a hash tag.)
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for _, id in ipairs(ids) do
  local h = redis.call('HGETALL', ARGV[1] .. id)
  if #h > 0 then
    table.insert(out, id)
    table.insert(out, h)
  end
end
return out
