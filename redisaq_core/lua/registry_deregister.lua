-- uses: foreign
-- Remove a service: its record, liveness key, worker status and every index entry.
-- KEYS: active (zset), types (set), worker_status (hash); a key of another type (another
--       client's) holds none of ours: the worker status is deleted, the others left alone
-- ARGV: base, service_id, and optionally the registered_at of the registration to remove:
--       a record of another registration (a newer instance of the same id) is left alone
-- A mark that the service was removed on purpose stays a day (see registry_heartbeat.lua):
-- its keepalive stops rather than registering it again.
-- Returns 1 when the service had a record or an index entry, else 0.
local active, types, wstatus = KEYS[1], KEYS[2], KEYS[3]
local base, id = ARGV[1], ARGV[2]
if ARGV[3] and ARGV[3] ~= '' then
  local at = redis.pcall('HGET', base .. ':service:' .. id, 'registered_at')
  if type(at) == 'string' and at ~= ARGV[3] then
    return 0
  end
end
local found = redis.call('DEL', base .. ':service:' .. id) + (read_foreign('ZREM', active, id) or 0)
redis.call('DEL', base .. ':alive:' .. id)
redis.call('SET', base .. ':removed:' .. id, '1', 'EX', 86400)
over_foreign('HDEL', wstatus, id)
for _, ty in ipairs(read_foreign('SMEMBERS', types) or {}) do
  local tkey = base .. ':type:' .. ty
  if redis.pcall('SREM', tkey, id) == 1 and redis.call('EXISTS', tkey) == 0 then
    redis.pcall('SREM', types, ty)
  end
end
if found > 0 then
  return 1
end
return 0
