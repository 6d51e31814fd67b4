-- Acknowledge entries of a partition, only while the caller holds its lease (fencing).
-- KEYS: stream, lease
-- ARGV: group, token, id, id, ...
-- Returns the number acknowledged, or -1 when the lease is not ours.
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return -1
end
return redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 3))
