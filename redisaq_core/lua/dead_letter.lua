-- Move one pending entry to the dead-letter stream and acknowledge it, atomically,
-- only while the caller holds the partition's lease.
-- KEYS: stream, lease, dlq
-- ARGV: group, token, id, maxlen (0: unbounded), field, value, ...
-- Returns the dead-letter entry id, or -1 when the lease is not ours.
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return -1
end
local maxlen = tonumber(ARGV[4])
local dl
if maxlen > 0 then
  dl = redis.call('XADD', KEYS[3], 'MAXLEN', '~', maxlen, '*', unpack(ARGV, 5))
else
  dl = redis.call('XADD', KEYS[3], '*', unpack(ARGV, 5))
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return dl
