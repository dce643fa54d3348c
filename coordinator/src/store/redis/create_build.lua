-- Creates a build at once: numbers it, gives it a queue_seq, stores it with version 1, queues it
-- and indexes it; or finds the build its idempotency token (or its id) already names.
--
-- KEYS: 1 build hash, 2 global queue_seq counter, 3 the project's build-number counter, 4 queue,
--       5 deadlines, 6 index, 7 the project's index, 8 (optional) the idempotency token.
-- ARGV: 1 the row (StoredBuild, prost, version 1, without number or queue_seq), 2 build id,
--       3 queue rank of the build's priority at queue_seq 0, 4 queued deadline (ms),
--       5 '1' when the row has a spec (whose build_number is set too).
-- Returns {number, queue_seq} for a new build, or the id of the existing one.
--
-- The number and queue_seq are written into the row without decoding it: protobuf lets fields be
-- appended to an encoded message (a later scalar wins, a later message field is merged into the
-- earlier one), so the row gets `queue_seq = seq` and `build { build_number = n }` (and
-- `spec { build_number = n }`) appended.

local existing = KEYS[8] and redis.call('GET', KEYS[8])
if existing then
  return existing
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return ARGV[2]
end

local function varint(n)
  local out = {}
  while n >= 128 do
    out[#out + 1] = string.char(n % 128 + 128)
    n = math.floor(n / 128)
  end
  out[#out + 1] = string.char(n)
  return table.concat(out)
end

-- Field `tag` (a message) holding only field 3 (varint) = number.
local function build_number_in(tag, number)
  local inner = string.char(3 * 8) .. varint(number)
  return string.char(tag * 8 + 2) .. varint(#inner) .. inner
end

local id = ARGV[2]
local seq = redis.call('INCR', KEYS[2])
local number = redis.call('INCR', KEYS[3])
local row = ARGV[1] .. build_number_in(2, number) .. string.char(6 * 8) .. varint(seq)
if ARGV[5] == '1' then
  row = row .. build_number_in(3, number)
end
redis.call('HSET', KEYS[1], 'v', 1, 'd', row)
redis.call('ZADD', KEYS[4], tonumber(ARGV[3]) + seq, id)
redis.call('ZADD', KEYS[5], ARGV[4], id)
redis.call('ZADD', KEYS[6], seq, id)
redis.call('ZADD', KEYS[7], seq, id)
if KEYS[8] then
  redis.call('SET', KEYS[8], id)
end
return {number, seq}
