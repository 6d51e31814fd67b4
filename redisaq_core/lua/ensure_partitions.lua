-- Raise a topic's partition count (and priority levels) to at least the given ones; never lower.
-- KEYS: meta (hash)
-- ARGV: partitions, exact ("1": fail when the stored count is higher), priorities
-- Returns {partitions, priorities} in force afterwards, or an error when asked to lower
-- the partition count with exact.
local cur = tonumber(redis.call('HGET', KEYS[1], 'partitions') or '0')
local want = tonumber(ARGV[1])
if want > cur then
  redis.call('HSET', KEYS[1], 'partitions', want)
  cur = want
elseif ARGV[2] == '1' and want < cur then
  return redis.error_reply('PARTITIONS cannot lower partitions from ' .. cur .. ' to ' .. want)
end
local levels = tonumber(redis.call('HGET', KEYS[1], 'priorities') or '1')
local want_levels = tonumber(ARGV[3] or '1')
if want_levels > levels then
  redis.call('HSET', KEYS[1], 'priorities', want_levels)
  levels = want_levels
end
return {cur, levels}
