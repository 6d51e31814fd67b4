-- Trim a partition stream towards maxlen, removing only entries every group has acknowledged
-- (the emulation of XADD/XTRIM's ACKED option on servers older than Redis 8.2).
-- KEYS[1]: the stream
-- ARGV[1]: maxlen; ARGV[2]: the most entries to remove in this call;
-- ARGV[3..]: the topic's group names (a group the stream lacks yet keeps everything)
-- Returns {removed, length after}.
local len = redis.call('XLEN', KEYS[1])
local maxlen = tonumber(ARGV[1])
if len <= maxlen then
  return {0, len}
end
-- Ids are compared as text: a sequence number past 2^53 (another client's entry with an
-- explicit id makes the ones after it such) is no exact Lua number.
local function less(a, b)  -- decimal numbers without leading zeros
  if #a ~= #b then
    return #a < #b
  end
  return a < b
end
local function before(a, b)
  local a_ms, a_seq = string.match(a, '^(%d+)-(%d+)$')
  local b_ms, b_seq = string.match(b, '^(%d+)-(%d+)$')
  if a_ms ~= b_ms then
    return less(a_ms, b_ms)
  end
  return less(a_seq, b_seq)
end
local groups = {}
for _, info in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local g = {}
  for i = 1, #info, 2 do
    g[info[i]] = info[i + 1]
  end
  groups[g['name']] = g
end
-- safe: entries up to it (in XRANGE's syntax: "(id" excludes id) have been acknowledged
-- by every group; id: where it lies.
local safe, safe_id = nil, nil
for i = 3, #ARGV do
  if groups[ARGV[i]] == nil then
    return {0, len}
  end
end
for name, g in pairs(groups) do
  -- Below its oldest pending entry, or up to its last delivered one.
  local bound, id
  if tonumber(g['pending']) > 0 then
    id = redis.call('XPENDING', KEYS[1], name)[2]
    bound = '(' .. id
  else
    id = g['last-delivered-id']
    bound = id
  end
  -- "(id" ends before "id" does: at an equal id, the exclusive one is the tighter.
  if safe == nil or before(id, safe_id) or (id == safe_id and string.sub(bound, 1, 1) == '(') then
    safe, safe_id = bound, id
  end
end
local limit = math.min(len - maxlen, tonumber(ARGV[2]))
local last = redis.call('XRANGE', KEYS[1], '-', safe or '+', 'COUNT', limit)
local n = #last
if n == 0 then
  return {0, len}
end
-- The entry after the last one removed is the first kept (there is one: n < len).
local kept = redis.call('XRANGE', KEYS[1], '(' .. last[n][1], '+', 'COUNT', 1)[1]
if kept == nil then
  return {0, len}
end
redis.call('XTRIM', KEYS[1], 'MINID', kept[1])
return {n, len - n}
