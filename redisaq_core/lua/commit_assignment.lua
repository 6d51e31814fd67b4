-- uses: foreign
-- Replace a group's assignment if nobody changed it since it was read.
-- KEYS: assignment (hash)
-- ARGV: expected_version, partition, owner, partition, owner, ...
-- Returns 1 when written, 0 when the version moved on (the caller re-reads).
local stored = redis.pcall('HGET', KEYS[1], '_v')
if foreign(stored) then
  stored = false  -- a key of another type (another client's) holds no assignment: written over
elseif type(stored) == 'table' then
  stored = redis.call('HGET', KEYS[1], '_v')  -- the server's own error: raised as it is
end
local v = tonumber(stored or '0')
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
