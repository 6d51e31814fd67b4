-- Prepended to the scripts that name it in their first line ("-- uses: settle_job").
-- The server's time in ms.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Give job `job_id`'s record `job` (a hash) its final `status` at `at` (ms, also written
-- to the field `field`), the expiry its result_ttl asks for (one EXPIRE can't take, from
-- another client, is left out), and its place in the jobs index `index`.
local function settle_job(job, index, job_id, status, field, at)
  redis.call('HSET', job, 'status', status, field, at, 'updated_at', at)
  local ttl = math.floor(tonumber(redis.call('HGET', job, 'result_ttl') or '0') or 0)
  if ttl >= 1 and ttl < 2^40 then
    redis.call('EXPIRE', job, ttl)
  end
  redis.pcall('ZADD', index, at, job_id)
end
