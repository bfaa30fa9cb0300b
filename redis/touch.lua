-- Update fields of a registry entry only if it still belongs to this
-- connection (a stale socket must not overwrite its successor's entry).
-- KEYS[1] daemon hash  ARGV[1] connection id  ARGV[2..] field, value, ...
if redis.call('HGET', KEYS[1], 'conn') == ARGV[1] then
  redis.call('HSET', KEYS[1], unpack(ARGV, 2))
  return 1
end
return 0
