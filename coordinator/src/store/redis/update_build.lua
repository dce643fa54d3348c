-- Compare-and-set of a build row on its version, with the queue change it implies, all or nothing.
--
-- KEYS: 1 build hash, 2 queue, 3 deadlines, 4 active set, 5 the project's running set.
-- ARGV: 1 expected version, 2 the new row (StoredBuild, prost, version already bumped),
--       3 change: keep | enqueue | claim | finish, 4 the project's concurrent build limit
--       (claim; 0 = none), 5 queue rank, 6 queued deadline (ms), 7 build id.
-- Returns done | conflict | limit | missing.

local version = redis.call('HGET', KEYS[1], 'v')
if not version then
  return 'missing'
end
if version ~= ARGV[1] then
  return 'conflict'
end

local change, id = ARGV[3], ARGV[7]
if change == 'claim' then
  local limit = tonumber(ARGV[4])
  if limit > 0 and redis.call('SISMEMBER', KEYS[5], id) == 0
      and redis.call('SCARD', KEYS[5]) >= limit then
    return 'limit'
  end
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('SADD', KEYS[4], id)
  redis.call('SADD', KEYS[5], id)
elseif change == 'enqueue' then
  redis.call('ZADD', KEYS[2], ARGV[5], id)
  redis.call('ZADD', KEYS[3], ARGV[6], id)
  redis.call('SREM', KEYS[4], id)
  redis.call('SREM', KEYS[5], id)
elseif change == 'keep' then
  -- Queued or not stays as it is; a queued build's rank and deadline follow its row.
  redis.call('ZADD', KEYS[2], 'XX', ARGV[5], id)
  redis.call('ZADD', KEYS[3], 'XX', ARGV[6], id)
elseif change == 'finish' then
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('SREM', KEYS[4], id)
  redis.call('SREM', KEYS[5], id)
end
redis.call('HSET', KEYS[1], 'v', tonumber(version) + 1, 'd', ARGV[2])
return 'done'
