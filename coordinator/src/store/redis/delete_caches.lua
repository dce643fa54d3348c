-- Removes cache entries, each only while its slot holds the same save (the same bytes): an entry
-- saved again meanwhile stays. KEYS[1] caches:{project}, KEYS[2] cache-used:{project};
-- ARGV: slot, stored entry, slot, stored entry, ...
local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    redis.call('HDEL', KEYS[2], ARGV[i])
    removed = removed + 1
  end
end
return removed
