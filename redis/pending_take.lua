-- A daemon's answer arrived: take the set of pods waiting for it, so each
-- gets it once (the caller publishes to each pod's command channel).
-- KEYS[1] pending set
-- Returns the waiting pods.
local pods = redis.call('SMEMBERS', KEYS[1])
if #pods > 0 then
  redis.call('DEL', KEYS[1])
end
return pods
