-- Acknowledge entries of a partition, only while the caller holds its lease (fencing).
-- KEYS: stream, lease
-- ARGV: group, token, the entry ids separated by spaces (one argument: a client packs one
--       string faster than a hundred)
-- Returns the number acknowledged, or -1 when the lease is not ours.
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return -1
end
local ids, n = {}, 0
for id in string.gmatch(ARGV[3], '%S+') do
  n = n + 1
  ids[n] = id
end
local acked = 0
for i = 1, n, 4096 do
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(ids, i, math.min(i + 4095, n)))
end
return acked
