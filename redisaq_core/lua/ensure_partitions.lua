-- Raise a topic's partition count (and priority levels) to at least the given ones; never lower.
-- KEYS: meta (hash)
-- ARGV: partitions, exact ("1": fail when the stored count is higher), priorities
-- Returns {partitions, priorities} in force afterwards, or an error when asked to lower
-- the partition count with exact. Stored counts are read as members read them
-- (keys.partition_count, keys.priority_levels): what another client wrote that is no
-- string of digits without a leading zero counts as absent and is written over (scripts
-- compare the stored text), as is a partition count past
-- 65,536; a level count past 16 reads as 16. A meta key another client made of another type
-- holds none of the topic's settings, and is replaced.
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'hash' and kind ~= 'none' then
  redis.call('DEL', KEYS[1])
end
local function stored(field, least)
  local raw = redis.call('HGET', KEYS[1], field)
  local n = raw and (raw == '0' or string.match(raw, '^[1-9]%d*$')) and tonumber(raw)
  return n and math.max(n, least) or least
end
local cur = stored('partitions', 0)
if cur > 65536 then
  cur = 0
end
local want = tonumber(ARGV[1])
if want > cur then
  redis.call('HSET', KEYS[1], 'partitions', want)
  cur = want
elseif ARGV[2] == '1' and want < cur then
  return redis.error_reply('PARTITIONS cannot lower partitions from ' .. cur .. ' to ' .. want)
end
local levels = math.min(stored('priorities', 1), 16)
local want_levels = tonumber(ARGV[3] or '1')
if want_levels > levels then
  redis.call('HSET', KEYS[1], 'priorities', want_levels)
  levels = want_levels
end
return {cur, levels}
