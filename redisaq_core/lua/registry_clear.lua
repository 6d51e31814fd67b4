-- uses: foreign
-- Delete every key of one registry (one key_prefix) in one step.
-- The services are found through the registry's own indexes, never by scanning keys.
-- KEYS: active (zset), types (set), worker_status (hash); a key of another type (another
--       client's) names no service, and is deleted
-- ARGV: base
-- Returns the number of services that were registered.
local active, types, wstatus = KEYS[1], KEYS[2], KEYS[3]
local base = ARGV[1]
local registered = read_foreign('ZCARD', active) or 0
local seen, ids = {}, {}
local function add(list)
  for _, id in ipairs(list) do
    if not seen[id] then
      seen[id] = true
      ids[#ids + 1] = id
    end
  end
end
add(read_foreign('ZRANGE', active, 0, -1) or {})
local statuses = redis.pcall('HKEYS', wstatus)
if not statuses.err then  -- another client's key of another type names no service
  add(statuses)
end
local typekeys = {}
for _, ty in ipairs(read_foreign('SMEMBERS', types) or {}) do
  local tkey = base .. ':type:' .. ty
  typekeys[#typekeys + 1] = tkey
  local members = redis.pcall('SMEMBERS', tkey)
  if not members.err then  -- another client's key of another type names no service
    add(members)
  end
end
for i = 1, #ids, 500 do
  local keys = {}
  for j = i, math.min(i + 499, #ids) do
    keys[#keys + 1] = base .. ':service:' .. ids[j]
    keys[#keys + 1] = base .. ':alive:' .. ids[j]
  end
  redis.call('DEL', unpack(keys))
end
for i = 1, #typekeys, 500 do
  redis.call('DEL', unpack(typekeys, i, math.min(i + 499, #typekeys)))
end
redis.call('DEL', active, types, wstatus)
return registered
