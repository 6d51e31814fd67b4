-- Acknowledge jobs of one partition stream and store their results, atomically, only while
-- the caller holds the partition's lease; then announce each.
-- KEYS: stream, lease, jobs index (zset), job hash, job hash, ...
-- ARGV: group, token, channel, worker, then per job: msg_id, job_id, result, result_kind
-- Returns the number of jobs completed, or -1 when the lease is not ours (nothing is written).
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return -1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 4, #KEYS do
  local a = 4 + 4 * (i - 4)
  local job_id = ARGV[a + 2]
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[a + 1])
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HSET', KEYS[i], 'status', 'completed', 'completed_at', now, 'updated_at', now,
      'worker', ARGV[4], 'result', ARGV[a + 3], 'result_kind', ARGV[a + 4])
    local ttl = tonumber(redis.call('HGET', KEYS[i], 'result_ttl') or '0')
    if ttl > 0 then
      redis.call('EXPIRE', KEYS[i], ttl)
    end
    redis.call('ZADD', KEYS[3], now, job_id)
    redis.call('PUBLISH', ARGV[3], job_id .. ' completed')
  end
end
return #KEYS - 3
