-- A pod starts waiting for a daemon's answer about one task. Only identical
-- questions share a command: the entry (a hash) holds the question in
-- flight (`q`, a digest of the command) and the waiting pods (`p:<pod>`).
-- Its TTL is set once, when the command is about to leave, and never
-- extended, so no entry outlives one request timeout after its command.
-- KEYS[1] pending hash  ARGV[1] pod id  ARGV[2] question  ARGV[3] ttl ms
-- Returns {state, ms left}: state 1 when nobody was waiting (the caller
-- sends the command), 0 when the same question is in flight (the caller
-- only waits), 2 when a different question is in flight (the caller waits
-- for its turn and tries again).
local q = redis.call('HGET', KEYS[1], 'q')
if not q then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'q', ARGV[2], 'p:' .. ARGV[1], '1')
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {1, tonumber(ARGV[3])}
end
local left = redis.call('PTTL', KEYS[1])
if q == ARGV[2] then
  redis.call('HSET', KEYS[1], 'p:' .. ARGV[1], '1')
  return {0, left}
end
return {2, left}
