-- uses: foreign
-- Read services and their records as one consistent snapshot, with the server's time.
-- KEYS: active (zset), index (the active zset again, or one type's set); a key of another
--       type (another client's) names no service
-- ARGV: base, max_age_seconds ('' for no age limit: every indexed service)
-- Returns {now_seconds, now_micros, id, last_seen_score, alive (0/1), {field, value, ...}, ...}
-- Ids without a record (or with a key of another type), or not in the active index, are
-- left out.
local active, index = KEYS[1], KEYS[2]
local base = ARGV[1]
local t = redis.call('TIME')
local cutoff = nil
if ARGV[2] ~= '' then
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  cutoff = string.format('%.6f', now - tonumber(ARGV[2]))
end
local ids
if index == active then
  if cutoff then
    ids = read_foreign('ZRANGEBYSCORE', active, cutoff, '+inf') or {}
  else
    ids = read_foreign('ZRANGE', active, 0, -1) or {}
  end
else
  ids = redis.pcall('SMEMBERS', index)
  if ids.err then
    ids = {}  -- a type index another client made of another type names no service
  end
end
local limit = cutoff and tonumber(cutoff)
local out = {t[1], t[2]}
for _, id in ipairs(ids) do
  local score = read_foreign('ZSCORE', active, id)
  if score and ((not limit) or tonumber(score) >= limit) then
    local fields = redis.pcall('HGETALL', base .. ':service:' .. id)
    if fields.err then
      fields = {}  -- a key of another type (another client's): no record
    end
    if #fields > 0 then
      out[#out + 1] = id
      out[#out + 1] = score
      out[#out + 1] = redis.call('EXISTS', base .. ':alive:' .. id)
      out[#out + 1] = fields
    end
  end
end
return out
