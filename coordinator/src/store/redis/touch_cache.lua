-- Marks a cache entry used, only while it is there (a removed entry never comes back).
-- KEYS[1] caches:{project}, KEYS[2] cache-used:{project}; ARGV[1] slot, ARGV[2] ms.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  return 1
end
return 0
