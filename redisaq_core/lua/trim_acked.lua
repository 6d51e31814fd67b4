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
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return {tonumber(ms), tonumber(seq)}
end
local function before(a, b)
  return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2])
end
local groups = {}
for _, info in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local g = {}
  for i = 1, #info, 2 do
    g[info[i]] = info[i + 1]
  end
  groups[g['name']] = g
end
-- safe: entries with an id below it have been acknowledged by every group.
local safe = nil
for i = 3, #ARGV do
  if groups[ARGV[i]] == nil then
    return {0, len}
  end
end
for name, g in pairs(groups) do
  local bound
  if tonumber(g['pending']) > 0 then
    bound = parse(redis.call('XPENDING', KEYS[1], name)[2])
  else
    bound = parse(g['last-delivered-id'])
    bound[2] = bound[2] + 1
  end
  if safe == nil or before(bound, safe) then
    safe = bound
  end
end
local limit = math.min(len - maxlen, tonumber(ARGV[2]))
local last
if safe == nil then
  last = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', limit)
else
  local bound = string.format('(%d-%d', safe[1], safe[2])
  last = redis.call('XRANGE', KEYS[1], '-', bound, 'COUNT', limit)
end
local n = #last
if n == 0 then
  return {0, len}
end
local cut = parse(last[n][1])
redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-%d', cut[1], cut[2] + 1))
return {n, len - n}
