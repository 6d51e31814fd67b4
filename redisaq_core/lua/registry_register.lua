-- uses: foreign
-- Register a service (or replace its registration) and index it, stamped with server time.
-- KEYS: active (zset), types (set), worker_status (hash); any of them of another type
--       (another client's) is replaced
-- ARGV: base, service_id, service_type, host, port, status, metadata (JSON),
--       alive_ttl_ms (0: no liveness key)
-- The record, type and liveness keys are built from base and share its hash tag, so every
-- key this script touches is in one cluster slot.
-- Returns the last_seen written, as "seconds.micros".
local active, types, wstatus = KEYS[1], KEYS[2], KEYS[3]
local base, id, stype = ARGV[1], ARGV[2], ARGV[3]
local ttl = tonumber(ARGV[8])
local t = redis.call('TIME')
local seen = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local skey = base .. ':service:' .. id

-- a re-registration may change the type: leave every other type's index
for _, other in ipairs(read_foreign('SMEMBERS', types) or {}) do
  if other ~= stype then
    local tkey = base .. ':type:' .. other
    if redis.pcall('SREM', tkey, id) == 1 and redis.call('EXISTS', tkey) == 0 then
      redis.pcall('SREM', types, other)
    end
  end
end

redis.call('DEL', skey, base .. ':removed:' .. id)  -- registered again: no longer removed
redis.call('HSET', skey,
  'service_id', id, 'host', ARGV[4], 'port', ARGV[5], 'service_type', stype,
  'status', ARGV[6], 'last_seen', seen, 'metadata', ARGV[7], 'registered_at', seen)
over_foreign('ZADD', active, seen, id)
local tkey = base .. ':type:' .. stype
over_foreign('SADD', tkey, id)  -- a type index of another type: written over
over_foreign('SADD', types, stype)
over_foreign('HDEL', wstatus, id)

local akey = base .. ':alive:' .. id
if ttl > 0 then
  redis.call('SET', akey, seen, 'PX', ttl)
else
  redis.call('DEL', akey)
end
return seen
