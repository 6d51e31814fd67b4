-- Acknowledge entries of a partition and delete those every group of the stream has now
-- acknowledged (XACKDEL ... ACKED, Redis 8.2), only while the caller holds its lease.
-- KEYS: stream, lease
-- ARGV: group, token, the entry ids separated by spaces (as ack.lua)
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
  local last = math.min(i + 4095, n)
  local done = redis.call('XACKDEL', KEYS[1], ARGV[1], 'ACKED', 'IDS', last - i + 1,
    unpack(ids, i, last))
  for _, result in ipairs(done) do
    if result ~= -1 then
      acked = acked + 1
    end
  end
end
return acked
