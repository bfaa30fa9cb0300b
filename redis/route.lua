-- Deliver commands, each to the pod holding its daemon's current
-- connection, in one round trip: one command, or a batch that arrived at
-- once (src/cluster/route_batch.rs; its daemons are all in one registry
-- bucket, so every key and channel is in one slot).
-- KEYS[i] daemon hash of command i
-- ARGV[1] pod channel prefix of the bucket  ARGV[2] PUBLISH or SPUBLISH
-- ARGV[1 + 2i] daemon id of command i  ARGV[2 + 2i] its payload
-- Returns one number per command: -1 when no entry exists, else the
-- receiver count (0: the holding pod is gone).
local out = {}
for i = 1, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'pod', 'conn')
  if not v[1] or not v[2] then
    out[i] = -1
  else
    out[i] = redis.call(ARGV[2], ARGV[1] .. v[1],
      'C|' .. ARGV[1 + 2 * i] .. '|' .. v[2] .. '|' .. ARGV[2 + 2 * i])
  end
end
return out
