-- Acknowledge a job's entry and store its result, atomically, only while the caller holds
-- the partition's lease; then announce it.
-- KEYS: stream, lease, job (hash), jobs index (zset)
-- ARGV: group, token, msg_id, job_id, channel, worker, result, result_kind ("b" or "s")
-- Returns 1, or -1 when the lease is not ours (nothing is written).
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return -1
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
if redis.call('EXISTS', KEYS[3]) == 1 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', KEYS[3], 'status', 'completed', 'completed_at', now, 'updated_at', now,
    'worker', ARGV[6], 'result', ARGV[7], 'result_kind', ARGV[8])
  local ttl = tonumber(redis.call('HGET', KEYS[3], 'result_ttl') or '0')
  if ttl > 0 then
    redis.call('EXPIRE', KEYS[3], ttl)
  end
  redis.call('ZADD', KEYS[4], now, ARGV[4])
  redis.call('PUBLISH', ARGV[5], ARGV[4] .. ' completed')
end
return 1
