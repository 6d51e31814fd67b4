-- Raise a topic's partition count to at least ARGV[1]; never lower it.
-- KEYS: meta (hash)
-- ARGV: partitions, exact ("1": fail when the stored count is higher)
-- Returns the count in force afterwards, or {err} when asked to lower it with exact.
local cur = tonumber(redis.call('HGET', KEYS[1], 'partitions') or '0')
local want = tonumber(ARGV[1])
if want > cur then
  redis.call('HSET', KEYS[1], 'partitions', want)
  return want
end
if ARGV[2] == '1' and want < cur then
  return redis.error_reply('PARTITIONS cannot lower partitions from ' .. cur .. ' to ' .. want)
end
return cur
