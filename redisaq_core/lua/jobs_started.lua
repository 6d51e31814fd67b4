-- Mark jobs of one partition active (a worker took them), then announce each, only while
-- the caller holds the partition's lease (a member that lost it while its read was under
-- way would mark a job another member has dead-lettered since "active" for good).
-- KEYS: jobs index (zset), lease, job hash, job hash, ...
-- ARGV: channel, worker, length of the job hashes' key prefix (a job's id follows it),
--       token, then per job: deliveries (the attempt number)
-- Records that no longer exist are skipped (never created again), and so are those already
-- "completed" (another member completed the job while this one was paused, or another
-- group did; a "dead" one is marked: a replayed dead letter runs again). A job cancelled
-- before it started ("cancelled", or "cancelling" when its worker stopped before settling
-- it) is not marked. Returns the ids of those cancelled jobs (to settle without a handler
-- call), or -1 when the lease is not ours (nothing is written).
if redis.pcall('GET', KEYS[2]) ~= ARGV[4] then  -- pcall: a key of another type is no lease
  return -1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local skip = tonumber(ARGV[3])
local cancelled, index = {}, {}
for i = 3, #KEYS do
  local job_id = string.sub(KEYS[i], skip + 1)
  local status = redis.pcall('HGET', KEYS[i], 'status')
  if type(status) == 'table' then
    status = false  -- not a hash (another client's key): no record to mark
  end
  if status == 'cancelled' or status == 'cancelling' then
    cancelled[#cancelled + 1] = job_id
  elseif status and status ~= 'completed' then
    redis.call('HSET', KEYS[i], 'status', 'active', 'active_at', now, 'updated_at', now,
      'worker', ARGV[2], 'attempts', ARGV[2 + i])
    index[#index + 1] = now
    index[#index + 1] = job_id
    redis.call('PUBLISH', ARGV[1], job_id .. ' active')
  end
end
for i = 1, #index, 512 do
  redis.pcall('ZADD', KEYS[1], unpack(index, i, math.min(i + 511, #index)))
end
return cancelled
