-- Appends chunk `seq` of a build's log: the chunk list's index is the seq, and a parallel list
-- holds each chunk's end offset in the whole log.
--
-- KEYS: 1 chunks, 2 end offsets.
-- ARGV: 1 seq, 2 data.
-- Returns the next expected seq (a seq already stored is ignored), or -1 - expected when `seq`
-- would leave a gap.

local next_seq = redis.call('LLEN', KEYS[1])
local seq = tonumber(ARGV[1])
if seq < next_seq then
  return next_seq
end
if seq > next_seq then
  return -1 - next_seq
end
local offset = 0
if next_seq > 0 then
  offset = tonumber(redis.call('LINDEX', KEYS[2], -1))
end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('RPUSH', KEYS[2], offset + #ARGV[2])
return next_seq + 1
