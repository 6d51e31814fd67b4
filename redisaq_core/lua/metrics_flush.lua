-- uses: foreign
-- Add one recorder's counts to a topic's metrics hash and its series, in one step.
-- KEYS[1]: the metrics hash
-- KEYS[2]: the topic's series hash (a ring of bucket records, see metrics/_series.py);
--          needed only by the series ops
-- KEYS[3]: the recorder's last flush number (a string); needed only by the op n
-- ARGV[1]: the recorder's flush interval (ms), stored beside each gauge
-- ARGV[2..]: triples (op, field, value):
--   i  add an integer (HINCRBY)
--   f  add a float (HINCRBYFLOAT)
--   m  keep the larger of the stored value and this one
--   g  set a gauge: "<value> <server time ms> <flush interval ms>"
--   d  delete the field
--   w  open the series record of the current bucket: field = bucket length (s), value =
--      slots in the ring; the series ops below need it before them
--   p  add value to the messages produced (field unused)
--   h  add value to the messages handled by group <field>
--   b  add value to the handled messages of group G whose handler took <= bound B and more
--      than the next smaller bound: field "G B" (B as the metrics hash writes it)
--   l  lag of group <field> seen now: the record keeps the largest seen in its bucket
--   n  first triple only: this flush's number, field = how long (ms) KEYS[3] keeps it. If
--      KEYS[3] holds that number, this flush was applied already (its reply was lost) and
--      nothing is done; else KEYS[3] is set to it with the rest
-- A series record that does not decode (written by another client) is replaced; values of
-- the wrong type in it count as 0. So is a series or metrics key of another type, and a
-- counter that can't be added to. The counters are checked before the first write, so that
-- no value another client stored makes the script fail with part of its counts applied.
-- Returns the number of triples applied.
local flush = ARGV[2] == 'n' and ARGV[4]
if flush and redis.pcall('GET', KEYS[3]) == flush then
  return 0
end
local MAX_RECORD = 65536
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local record, slot, ttl = nil, nil, 0

local function num(v)
  if type(v) == 'number' and v == v and v < math.huge and v > -math.huge then return v end
  return 0
end

local function clean(d, start)
  local r = {t = start, p = num(d.p), g = {}}
  if type(d.g) ~= 'table' then return r end
  for name, g in pairs(d.g) do
    if type(name) == 'string' and type(g) == 'table' then
      local c = {h = num(g.h), b = {}}
      if g.l ~= nil then c.l = num(g.l) end
      if type(g.b) == 'table' then
        for bound, n in pairs(g.b) do
          if type(bound) == 'string' then c.b[bound] = num(n) end
        end
      end
      r.g[name] = c
    end
  end
  return r
end

local function open(step, slots)
  local bucket = math.floor(tonumber(t[1]) / step)
  local start = bucket * step
  slot = string.format('%d', bucket % slots)
  ttl = (slots + 1) * step * 1000
  local raw = redis.pcall('HGET', KEYS[2], slot)
  if type(raw) == 'table' then  -- a key of another type (another client's): replaced
    redis.call('DEL', KEYS[2])
    raw = false
  end
  local ok, decoded = false, nil
  if raw and #raw <= MAX_RECORD then ok, decoded = pcall(cjson.decode, raw) end
  if ok and type(decoded) == 'table' and decoded.t == start then
    record = clean(decoded, start)
  else
    record = {t = start, p = 0, g = {}}
  end
end

local function group(name)
  local g = record.g[name]
  if not g then
    g = {h = 0, b = {}}
    record.g[name] = g
  end
  return g
end

-- Whether a stored counter takes the increment: an integer for HINCRBY ('i'), a number whose
-- sum stays finite for HINCRBYFLOAT ('f'). The server's answer stays the last word (add()).
local function takes(op, stored, value)
  if not stored then
    return true
  elseif op == 'i' then
    return stored == '0' or (#stored <= 20 and string.find(stored, '^%-?[1-9]%d*$') ~= nil)
  end
  local x = not string.find(stored, '^%s') and tonumber(stored)
  return x and x == x and math.abs(x + tonumber(value)) < math.huge or false
end

-- A metrics key of another type (another client's) is replaced.
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'hash' and kind ~= 'none' then
  redis.call('DEL', KEYS[1])
end
local over, counters = {}, {}
for i = 2, #ARGV - 2, 3 do
  if ARGV[i] == 'i' or ARGV[i] == 'f' then
    counters[#counters + 1] = i
  end
end
for first = 1, #counters, 500 do
  local fields = {}
  for j = first, math.min(first + 499, #counters) do
    fields[#fields + 1] = ARGV[counters[j] + 1]
  end
  local stored = redis.call('HMGET', KEYS[1], unpack(fields))
  for j = first, math.min(first + 499, #counters) do
    local i = counters[j]
    if not takes(ARGV[i], stored[j - first + 1], ARGV[i + 2]) then
      over[ARGV[i + 1]] = true
    end
  end
end

-- A stored value the command can't add to (no number, or past the largest) is written over.
local function add(command, field, value)
  if over[field] then
    redis.call('HSET', KEYS[1], field, value)
    return
  end
  local added = redis.pcall(command, KEYS[1], field, value)
  if foreign(added) then
    redis.call('HSET', KEYS[1], field, value)
  elseif type(added) == 'table' then
    redis.call(command, KEYS[1], field, value)  -- the server's own error: raised as it is
  end
end

local n = 0
for i = 2, #ARGV - 2, 3 do
  local op, field, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if op == 'i' then
    add('HINCRBY', field, value)
  elseif op == 'f' then
    add('HINCRBYFLOAT', field, value)
  elseif op == 'm' then
    local current = tonumber(redis.call('HGET', KEYS[1], field))
    if not current or tonumber(value) > current then
      redis.call('HSET', KEYS[1], field, value)
    end
  elseif op == 'g' then
    redis.call('HSET', KEYS[1], field, value .. ' ' .. now .. ' ' .. ARGV[1])
  elseif op == 'd' then
    redis.call('HDEL', KEYS[1], field)
  elseif op == 'w' then
    open(tonumber(field), tonumber(value))
  elseif record and op == 'p' then
    record.p = record.p + tonumber(value)
  elseif record and op == 'h' then
    local g = group(field)
    g.h = g.h + tonumber(value)
  elseif record and op == 'b' then
    local name, bound = string.match(field, '^(%S+) (%S+)$')
    if name then
      local g = group(name)
      g.b[bound] = (g.b[bound] or 0) + tonumber(value)
    end
  elseif record and op == 'l' then
    local g = group(field)
    local lag = tonumber(value)
    if g.l == nil or lag > g.l then g.l = lag end
  end
  n = n + 1
end
if record then
  redis.call('HSET', KEYS[2], slot, cjson.encode(record))
  redis.call('PEXPIRE', KEYS[2], ttl)
end
if flush then
  redis.call('SET', KEYS[3], flush, 'PX', ARGV[3])
end
return n
