-- Deliver commands, each to the pod holding its daemon's current
-- connection, in one round trip: one command, or a batch that arrived at
-- once (src/cluster/route_batch.rs; its daemons are all in one registry
-- bucket, so every key and channel is in one slot). The message is a
-- `D` pod message (src/cluster/pod_message.rs): the payload already holds
-- the sender's envelope and the command's JSON.
-- KEYS[i] daemon hash of command i
-- ARGV[1] pod channel prefix of the bucket  ARGV[2] PUBLISH or SPUBLISH
-- ARGV[3i] daemon id of command i
-- ARGV[3i + 1] a connection id known to be gone ('' for none): a command
--   forwarded after its socket was replaced goes only to a newer one
-- ARGV[3i + 2] its payload
-- Returns one number per command: -1 when no entry exists, -3 when the
-- entry still names the gone connection (nothing newer holds the daemon),
-- -2 when Redis refused that command's read or publish (the others still
-- went out: a script is not rolled back), else the receiver count (0: the
-- holding pod is gone).
local out = {}
for i = 1, #KEYS do
  local v = redis.pcall('HMGET', KEYS[i], 'pod', 'conn')
  if v.err then
    out[i] = -2
  elseif not v[1] or not v[2] then
    out[i] = -1
  elseif v[2] == ARGV[3 * i + 1] then
    out[i] = -3
  else
    local n = redis.pcall(ARGV[2], ARGV[1] .. v[1],
      'D|' .. ARGV[3 * i] .. '|' .. v[2] .. '|' .. ARGV[3 * i + 2])
    if type(n) == 'table' then
      out[i] = -2
    else
      out[i] = n
    end
  end
end
return out
