-- uses: foreign
-- Record a group member's heartbeat and return the group's view.
-- KEYS: members (zset), tokens (hash), meta (hash), assignment (hash), members version
--       (string: raised whenever a member joins, leaves or expires), then the leases to take
--       or renew in the same step (one server only: they are in other slots), as lease.lua
--       does with ARGV[6] (the member's previous token, may be empty); the first ARGV[7] of
--       them (0 if absent) are renewed without a check first, as lease.lua's "renew" mode;
--       ARGV[8] "check" has the name checked even on a steady beat
-- ARGV: name, token, ttl_ms, mode: "beat", "join", or "static-join" (a static member's
--       restart: this token replaces a live earlier instance of the same name, and the
--       members version is raised so that the earlier instance's next beat checks its name),
--       known: "<assignment version> <members version> <partitions> <members>" the caller
--       last saw (empty: it saw nothing yet); the member count catches a member of an older
--       release, which joins and leaves without raising the members version
-- The assignment hash holds "_v", its version, raised by each commit.
-- Returns {now_ms, partitions, {member...}, {partition, owner, ...}, version, replaced_token,
-- priorities, members_version, {lease state...}}; the counts (partitions, priorities) are
-- text as stored, for the member to read; the member and assignment lists are empty ({})
-- when nothing changed since "known" (the caller keeps what it has); a lease state is
-- lease.lua's (1 renewed, 2 acquired, 0 held by another). {now_ms, -1, {}, {}, 0,
-- holder_token, 1, 0, {}} (partitions the number -1) when another live instance holds
-- the name; refused in "beat" mode (this instance was replaced), the members version is
-- raised.
local members, tokens, meta, assignment, mv = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local name, token, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- A group key another client made of another type holds none of the group's records: read
-- through over_foreign, it is deleted and the members' beats write it anew.
local expired = over_foreign('ZRANGEBYSCORE', members, '-inf', '(' .. (now - ttl))
for _, m in ipairs(expired) do
  redis.call('ZREM', members, m)
  over_foreign('HDEL', tokens, m)
end
if #expired > 0 then
  raise_version(mv)
end

local function whole(raw)  -- a version as stored; another client's that is none reads as 0
  local n = tonumber(raw or '0')
  if n == nil or n ~= math.floor(n) or n < 0 or n > 2^52 then
    return 0
  end
  return n
end

local function versions()
  local info = redis.pcall('HMGET', meta, 'partitions', 'priorities')
  if info.err then
    info = {}  -- a meta key of another type holds no counts: the member writes them anew
  end
  local v = whole(over_foreign('HGET', assignment, '_v'))
  local m = whole(over_foreign('GET', mv))
  local partitions = info[1] or '0'
  local seen = v .. ' ' .. m .. ' ' .. partitions .. ' ' .. redis.call('ZCARD', members)
  return partitions, info[2] or '1', v, m, seen  -- counts as stored: the member reads them
end

-- A steady beat without leases: nothing changed since "known" (a static restart that takes
-- the name over raises the members version), so the name is still this instance's. An older
-- release's restart does not raise it: "check" beats (and those with leases) look anyway.
if ARGV[4] == 'beat' and ARGV[5] ~= '' and #KEYS == 5 and ARGV[8] ~= 'check' then
  local partitions, priorities, version, members_version, seen = versions()
  if ARGV[5] == seen and redis.call('ZADD', members, 'XX', 'CH', now, name) == 1 then
    return {now, partitions, {}, {}, version, '', priorities, members_version, {}}
  end
end

-- A score ahead of this server's clock was written under another clock (a failover to a
-- replica whose clock is behind): a member that stopped then would outlive its TTL by the
-- difference. Such a score counts from now. Not on a steady beat: on those with leases,
-- changes or a name check.
for _, m in ipairs(redis.call('ZRANGEBYSCORE', members, '(' .. now, '+inf')) do
  redis.call('ZADD', members, 'XX', now, m)
end

local replaced = ''
local holder = over_foreign('HGET', tokens, name)
if holder and holder ~= token then
  if ARGV[4] ~= 'static-join' then
    if ARGV[4] == 'beat' then
      -- An earlier instance of a name taken over: what it read meanwhile is pending under
      -- the name. Raised, so that the members look at their pending entries again.
      raise_version(mv)
    end
    return {now, -1, {}, {}, 0, holder, 1, 0, {}}
  end
  replaced = holder
  raise_version(mv)
end
if not holder then
  redis.call('HSET', tokens, name, token)
elseif replaced ~= '' then
  redis.call('HSET', tokens, name, token)
end
if redis.call('ZADD', members, now, name) == 1 then
  raise_version(mv)
end

local states = {}
local blind = 5 + tonumber(ARGV[7] or '0')
for i = 6, #KEYS do
  local cur
  if i <= blind then
    cur = redis.pcall('GETEX', KEYS[i], 'PX', ttl)
  else
    cur = redis.pcall('GET', KEYS[i])
  end
  if foreign(cur) then
    cur = false  -- a key of another type (another client's) holds no lease: taken over
  elseif type(cur) == 'table' and i <= blind then
    redis.call('GETEX', KEYS[i], 'PX', ttl)  -- the server's own error: raised as it is
  elseif type(cur) == 'table' then
    redis.call('GET', KEYS[i])
  end
  if cur == token then
    if i > blind then
      redis.call('PEXPIRE', KEYS[i], ttl)
    end
    states[#states + 1] = 1
  elseif (not cur) or (ARGV[6] ~= '' and cur == ARGV[6]) then
    redis.call('SET', KEYS[i], token, 'PX', ttl)
    states[#states + 1] = 2
  else
    states[#states + 1] = 0
  end
end

local partitions, priorities, version, members_version, seen = versions()
if ARGV[5] == seen then
  return {now, partitions, {}, {}, version, replaced, priorities, members_version, states}
end
local live = redis.call('ZRANGE', members, 0, -1)
local current = redis.call('HGETALL', assignment)
local pairs_out = {}
for i = 1, #current, 2 do
  if current[i] ~= '_v' then
    pairs_out[#pairs_out + 1] = current[i]
    pairs_out[#pairs_out + 1] = current[i + 1]
  end
end
return {now, partitions, live, pairs_out, version, replaced, priorities, members_version, states}
