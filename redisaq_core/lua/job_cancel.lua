-- Cancel a job: a job not started (queued, scheduled, or failed and waiting for its retry)
-- becomes "cancelled" and is never started; a running one becomes "cancelling", which the
-- worker running it is told on the cancel channel and finds on its next heartbeat (the
-- record is what counts; the notice only makes it quick). Announces the change.
-- KEYS: job (hash), jobs index (zset)
-- ARGV: job_id, channel, cancel channel
-- Returns {0, ""} when the record does not exist (a key of another type is none),
-- {1, new status} when cancelled or asked to stop ("cancelling" again for a job already
-- asked), {2, status} for a finished job (nothing is written).
local status = redis.pcall('HGET', KEYS[1], 'status')
if type(status) ~= 'string' then  -- none, or another client's key of another type
  return {0, ''}
end
local new
if status == 'queued' or status == 'scheduled' or status == 'failed' then
  new = 'cancelled'
elseif status == 'active' then
  new = 'cancelling'
elseif status == 'cancelling' then
  return {1, status}
else
  return {2, status}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'status', new, new .. '_at', now, 'updated_at', now)
redis.pcall('ZADD', KEYS[2], now, ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[1] .. ' ' .. new)
if new == 'cancelling' then
  redis.call('PUBLISH', ARGV[3], ARGV[1])
end
return {1, new}
