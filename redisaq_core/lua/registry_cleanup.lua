-- uses: foreign
-- Remove, in one step, every service whose last heartbeat is older than the timeout.
-- Age is judged by the server's clock. A concurrent heartbeat runs either before this script
-- (its service is then fresh and stays) or after it (and finds no record), never in between.
-- KEYS: active (zset), types (set), worker_status (hash); a key of another type (another
--       client's) holds none of ours: the worker status is deleted, the others left alone
-- ARGV: base, timeout_seconds
-- Returns the number of services removed.
local active, types, wstatus = KEYS[1], KEYS[2], KEYS[3]
local base = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cutoff = string.format('%.6f', now - tonumber(ARGV[2]))
local stale = read_foreign('ZRANGEBYSCORE', active, '-inf', '(' .. cutoff) or {}
if #stale == 0 then
  return 0
end
local typelist = read_foreign('SMEMBERS', types) or {}
for i = 1, #stale, 500 do
  local chunk, keys = {}, {}
  for j = i, math.min(i + 499, #stale) do
    local id = stale[j]
    chunk[#chunk + 1] = id
    keys[#keys + 1] = base .. ':service:' .. id
    keys[#keys + 1] = base .. ':alive:' .. id
  end
  redis.call('DEL', unpack(keys))
  redis.call('ZREM', active, unpack(chunk))
  over_foreign('HDEL', wstatus, unpack(chunk))
  for _, ty in ipairs(typelist) do
    redis.pcall('SREM', base .. ':type:' .. ty, unpack(chunk))  -- pcall: another type's key
  end
end
for _, ty in ipairs(typelist) do
  if redis.call('EXISTS', base .. ':type:' .. ty) == 0 then
    redis.pcall('SREM', types, ty)
  end
end
return #stale
