-- uses: foreign
-- Record a heartbeat (last_seen := server time) of a registered service.
-- KEYS: active (zset), types (set); either of another type (another client's) is replaced
-- ARGV: base, service_id, alive_ttl_ms (0: leave the liveness key alone), and optionally
--       the registered_at of the registration the caller made
-- Returns the last_seen written ("seconds.micros"), or nil when the service has no record
-- (or a key of another type in its place);
-- its liveness key is then deleted, so a keepalive whose record was removed stops counting
-- as connected. Also nil, touching nothing, when the record is another registration than
-- the caller's (a newer instance of the same service id replaced it). 0 in place of nil
-- when nothing says the record was removed on purpose (no mark of a deregistration, no
-- index entry left behind by a DEL of the record alone): Redis lost its data, or a cleanup
-- took the service for stale; its keepalive registers it again.
local active, types = KEYS[1], KEYS[2]
local base, id, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local skey = base .. ':service:' .. id
local akey = base .. ':alive:' .. id
if redis.call('TYPE', skey).ok ~= 'hash' then  -- none, or another client's key
  redis.call('DEL', akey)
  local removed = redis.call('EXISTS', base .. ':removed:' .. id) == 1
  if not removed and not read_foreign('ZSCORE', active, id) then
    return 0
  end
  return false
end
if ARGV[4] and ARGV[4] ~= '' and redis.call('HGET', skey, 'registered_at') ~= ARGV[4] then
  return false
end
local t = redis.call('TIME')
local seen = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
redis.call('HSET', skey, 'last_seen', seen)
over_foreign('ZADD', active, seen, id)
local stype = redis.call('HGET', skey, 'service_type')
if stype and stype ~= '' then
  local tkey = base .. ':type:' .. stype
  over_foreign('SADD', tkey, id)  -- a type index of another type: written over
  over_foreign('SADD', types, stype)
end
if ttl > 0 then
  redis.call('SET', akey, seen, 'PX', ttl)
end
return seen
