-- A daemon's answer arrived: take the entry of pods waiting for it, so each
-- gets it once (the caller publishes to each pod's command channel), and
-- the next question about the task may go.
-- KEYS[1] pending hash
-- Returns {question, pod, pod, ...}, or {} when nobody waits.
local all = redis.call('HGETALL', KEYS[1])
if #all == 0 then
  return {}
end
redis.call('DEL', KEYS[1])
local out = {''}
for i = 1, #all, 2 do
  local f = all[i]
  if f == 'q' then
    out[1] = all[i + 1]
  elseif string.sub(f, 1, 2) == 'p:' then
    table.insert(out, string.sub(f, 3))
  end
end
return out
