-- uses: foreign
-- Set a registered service's health status, optionally its metadata, and refresh last_seen.
-- KEYS: active (zset; one of another type, another client's, is replaced)
-- ARGV: base, service_id, status, expected_metadata, new_metadata,
--       replace ("1": write new_metadata if the stored metadata still equals
--       expected_metadata; "0": leave the metadata alone)
-- Returns the last_seen written ("seconds.micros"), 0 when the service has no record, or -1
-- when its metadata changed since the caller read it (the caller merges again and retries).
local base, id = ARGV[1], ARGV[2]
local skey = base .. ':service:' .. id
if redis.call('TYPE', skey).ok ~= 'hash' then  -- none, or another client's key
  return 0
end
if ARGV[6] == '1' then
  local cur = redis.call('HGET', skey, 'metadata') or ''
  if cur ~= ARGV[4] then
    return -1
  end
  redis.call('HSET', skey, 'metadata', ARGV[5])
end
local t = redis.call('TIME')
local seen = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
redis.call('HSET', skey, 'status', ARGV[3], 'last_seen', seen)
over_foreign('ZADD', KEYS[1], seen, id)
return seen
