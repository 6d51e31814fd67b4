-- Replace a group's assignment if nobody changed it since it was read.
-- KEYS: assignment (hash)
-- ARGV: expected_version, partition, owner, partition, owner, ...
-- Returns 1 when written, 0 when the version moved on (the caller re-reads).
local v = tonumber(redis.call('HGET', KEYS[1], '_v') or '0')
if v == nil or v ~= math.floor(v) or v < 0 or v > 2^52 then
  v = 0  -- another client's value that is no version: read as heartbeat.lua reads it
end
if v ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('DEL', KEYS[1])
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[1], '_v', v + 1)
return 1
