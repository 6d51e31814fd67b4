-- Acknowledge cancelled jobs of one partition stream without running them (or after their
-- handler was cancelled), only while the caller holds the partition's lease; each record
-- becomes "cancelled" (but one "completed" meanwhile) and expires after its result_ttl.
-- Announces the records that change.
-- KEYS: stream, lease, jobs index (zset), job hash, job hash, ...
-- ARGV: group, token, channel, then per job: msg_id, job_id
-- Returns the number of entries acknowledged, or -1 when the lease is not ours (nothing
-- is written).
if redis.pcall('GET', KEYS[2]) ~= ARGV[2] then  -- pcall: a key of another type is no lease
  return -1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 4, #KEYS do
  local a = 2 + 2 * (i - 4)
  local job_id = ARGV[a + 3]
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[a + 2])
  local status = redis.pcall('HGET', KEYS[i], 'status')
  if type(status) == 'table' then
    status = false  -- not a hash (another client's key): no record to settle
  end
  if status == 'completed' then
    -- completed by another group's worker before this one settled it: final, left so
  elseif status then
    if status ~= 'cancelled' then
      redis.call('HSET', KEYS[i], 'status', 'cancelled', 'cancelled_at', now)
      redis.call('PUBLISH', ARGV[3], job_id .. ' cancelled')
    end
    redis.call('HSET', KEYS[i], 'updated_at', now)
    local ttl = math.floor(tonumber(redis.call('HGET', KEYS[i], 'result_ttl') or '0') or 0)
    if ttl >= 1 and ttl < 2^40 then  -- a result_ttl EXPIRE can take (another client's may not)
      redis.call('EXPIRE', KEYS[i], ttl)
    end
    redis.pcall('ZADD', KEYS[3], now, job_id)
  else  -- no record (deleted, or replaced by another client): its waiters learn so
    redis.call('PUBLISH', ARGV[3], job_id .. ' gone')
  end
end
return #KEYS - 3
