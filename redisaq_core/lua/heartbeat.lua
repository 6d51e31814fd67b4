-- Record a group member's heartbeat and return the group's view.
-- KEYS: members (zset), tokens (hash), meta (hash), assignment (hash)
-- ARGV: name, token, ttl_ms, mode: "beat", "join", or "static-join" (a static member's
--       restart: this token replaces a live earlier instance of the same name)
-- Returns {now_ms, partitions, {member...}, {partition, owner, ...}, version, replaced_token,
-- priorities}, or {now_ms, -1, {}, {}, 0, holder_token, 1} when another live instance holds
-- the name.
local members, tokens, meta, assignment = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local name, token, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local expired = redis.call('ZRANGEBYSCORE', members, '-inf', '(' .. (now - ttl))
for _, m in ipairs(expired) do
  redis.call('ZREM', members, m)
  redis.call('HDEL', tokens, m)
end

local replaced = ''
local holder = redis.call('HGET', tokens, name)
if holder and holder ~= token then
  if ARGV[4] ~= 'static-join' then
    return {now, -1, {}, {}, 0, holder, 1}
  end
  replaced = holder
end
redis.call('HSET', tokens, name, token)
redis.call('ZADD', members, now, name)

local partitions = tonumber(redis.call('HGET', meta, 'partitions') or '0')
local priorities = tonumber(redis.call('HGET', meta, 'priorities') or '1')
local live = redis.call('ZRANGE', members, 0, -1)
local current = redis.call('HGETALL', assignment)
local version = 0
local pairs_out = {}
for i = 1, #current, 2 do
  if current[i] == '_v' then
    version = tonumber(current[i + 1])
  else
    pairs_out[#pairs_out + 1] = current[i]
    pairs_out[#pairs_out + 1] = current[i + 1]
  end
end
return {now, partitions, live, pairs_out, version, replaced, priorities}
