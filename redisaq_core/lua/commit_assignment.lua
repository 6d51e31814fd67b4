-- uses: foreign
-- Replace a group's assignment if nobody changed it since it was read.
-- KEYS: assignment (hash)
-- ARGV: expected_version, partition, owner, partition, owner, ...
-- Returns 1 when written, 0 when the version moved on (the caller re-reads).
local stored = redis.pcall('HGET', KEYS[1], '_v')
local spoilt = foreign(stored)
if spoilt then
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
-- Written over in place, the key never gone: while its slot migrates, a key this node no
-- longer holds is out of a script's reach, and a DEL then HSET failed half way.
local stale = {}
if spoilt then
  redis.call('DEL', KEYS[1])
else
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    stale[field] = true
  end
end
stale['_v'] = nil
redis.call('HSET', KEYS[1], '_v', v + 1)
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  stale[ARGV[i]] = nil
end
for field in pairs(stale) do
  redis.call('HDEL', KEYS[1], field)
end
return 1
