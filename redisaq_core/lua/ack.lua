-- Acknowledge entries of a partition, only while the caller holds its lease (fencing); with
-- deletion, also delete those every group of the stream has now acknowledged (XACKDEL ...
-- ACKED, Redis 8.2: the topic's trim="delete-acked").
-- KEYS: stream, lease
-- ARGV: group, token, "1" to delete or "0", the entry ids separated by spaces (one
--       argument: a client packs one string faster than a hundred)
-- Returns the number acknowledged, or -1 when the lease is not ours.
if redis.pcall('GET', KEYS[2]) ~= ARGV[2] then  -- pcall: a key of another type is no lease
  return -1
end
local ids, n = {}, 0
for id in string.gmatch(ARGV[4], '%S+') do
  n = n + 1
  ids[n] = id
end
local acked = 0
for i = 1, n, 4096 do
  local last = math.min(i + 4095, n)
  if ARGV[3] == '1' then
    local done = redis.call('XACKDEL', KEYS[1], ARGV[1], 'ACKED', 'IDS', last - i + 1,
      unpack(ids, i, last))
    for _, result in ipairs(done) do
      if result ~= -1 then
        acked = acked + 1
      end
    end
  else
    acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(ids, i, last))
  end
end
return acked
