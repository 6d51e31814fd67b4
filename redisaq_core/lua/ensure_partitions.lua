-- Raise a topic's partition count (and priority levels) to at least the given ones; never lower.
-- KEYS: meta (hash)
-- ARGV: partitions, exact ("1": fail when the stored count is higher), priorities
-- Returns {partitions, priorities} in force afterwards, or an error when asked to lower
-- the partition count with exact. A stored count another client wrote that is no whole
-- number in range (partitions 0 to 65,536, levels 1 to 16) counts as absent: it is
-- written over.
local function stored(field, least, most)
  local n = tonumber(redis.call('HGET', KEYS[1], field) or '')
  if n and n == math.floor(n) and n >= least and n <= most then
    return n
  end
  return least
end
local cur = stored('partitions', 0, 65536)
local want = tonumber(ARGV[1])
if want > cur then
  redis.call('HSET', KEYS[1], 'partitions', want)
  cur = want
elseif ARGV[2] == '1' and want < cur then
  return redis.error_reply('PARTITIONS cannot lower partitions from ' .. cur .. ' to ' .. want)
end
local levels = stored('priorities', 1, 16)
local want_levels = tonumber(ARGV[3] or '1')
if want_levels > levels then
  redis.call('HSET', KEYS[1], 'priorities', want_levels)
  levels = want_levels
end
return {cur, levels}
