-- Acknowledge jobs of one partition stream and store their results, atomically, only while
-- the caller holds the partition's lease; then announce each.
-- KEYS: stream, lease, jobs index (zset), job hash, job hash, ...
-- ARGV: group, token, channel, worker, length of the job hashes' key prefix (a job's id
--       follows it), then per job: msg_id, result (its kind, "b" bytes or "s" text, then
--       the serialized value)
-- A job without a record is acknowledged and announced "gone"; one already "cancelled" is
-- acknowledged and left so.
-- Returns the number of jobs completed, or -1 when the lease is not ours (nothing is written).
if redis.pcall('GET', KEYS[2]) ~= ARGV[2] then  -- pcall: a key of another type is no lease
  return -1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local skip = tonumber(ARGV[5])
local ids, index = {}, {}
for i = 4, #KEYS do
  local a = 6 + 2 * (i - 4)
  local job_id = string.sub(KEYS[i], skip + 1)
  ids[#ids + 1] = ARGV[a]
  local record = redis.pcall('HMGET', KEYS[i], 'status', 'result_ttl')
  if record.err then
    record = {false}  -- not a hash (another client's key): no record to complete
  end
  if record[1] == 'cancelled' then
    -- cancelled for good (another group's worker settled it so, and its waiters were told):
    -- final, as "completed" is to the other scripts; the entry is acknowledged all the same
  elseif record[1] then
    local result = ARGV[a + 1]
    redis.call('HSET', KEYS[i], 'status', 'completed', 'completed_at', now, 'updated_at', now,
      'worker', ARGV[4], 'result', string.sub(result, 2), 'result_kind', string.sub(result, 1, 1))
    local ttl = math.floor(tonumber(record[2] or '0') or 0)
    if ttl >= 1 and ttl < 2^40 then  -- a result_ttl EXPIRE can take (another client's may not)
      redis.call('EXPIRE', KEYS[i], ttl)
    end
    index[#index + 1] = now
    index[#index + 1] = job_id
    redis.call('PUBLISH', ARGV[3], job_id .. ' completed')
  else  -- no record (deleted, or replaced by another client): its waiters learn so
    redis.call('PUBLISH', ARGV[3], job_id .. ' gone')
  end
end
for i = 1, #ids, 512 do
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ids, i, math.min(i + 511, #ids)))
end
for i = 1, #index, 512 do
  redis.pcall('ZADD', KEYS[3], unpack(index, i, math.min(i + 511, #index)))
end
return #KEYS - 3
