-- Acknowledge entries of a partition and delete those every group of the stream has now
-- acknowledged (XACKDEL ... ACKED, Redis 8.2), only while the caller holds its lease.
-- KEYS: stream, lease
-- ARGV: group, token, id, id, ...
-- Returns the number acknowledged, or -1 when the lease is not ours.
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return -1
end
local done = redis.call('XACKDEL', KEYS[1], ARGV[1], 'ACKED', 'IDS', #ARGV - 2, unpack(ARGV, 3))
local n = 0
for _, result in ipairs(done) do
  if result ~= -1 then
    n = n + 1
  end
end
return n
