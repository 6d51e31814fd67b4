-- Store a running job's progress (JSON text) in its record and announce it as
-- "<job_id> progress". Only a job that is running ("active" or "cancelling") takes it, and
-- only from the member holding its partition's lease: a handler that ran on after the lease
-- moved on (the job is another member's now) writes nothing.
-- KEYS: job (hash), jobs index (zset), the partition's lease
-- ARGV: job_id, channel, progress, the member's lease token
-- Returns 1, or 0 when the record does not exist, the job is not running or the lease is
-- not the member's (nothing written).
if redis.pcall('GET', KEYS[3]) ~= ARGV[4] then  -- pcall: a key of another type is no lease
  return 0
end
local status = redis.pcall('HGET', KEYS[1], 'status')  -- another type's key: no record
if status ~= 'active' and status ~= 'cancelling' then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'progress', ARGV[3], 'progress_at', now, 'updated_at', now)
redis.pcall('ZADD', KEYS[2], now, ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[1] .. ' progress')
return 1
