-- Record that a job became active (a handler started) or failed (it will be retried).
-- KEYS: job (hash), jobs index (zset), and optionally the partition's lease
-- ARGV: job_id, channel, status ("active" or "failed"), worker, error, error_type,
--       deliveries (for "active": the attempt number, the entry's delivery count), and
--       with a lease the caller's token
-- With a lease, nothing is written unless the caller holds it (-1): a member paused past
-- its lease whose handler failed meanwhile must not write "failed" over the "active" of
-- the member running the job now (a cancel would take that job for one not started).
-- Returns 1, or 0 when the record no longer exists (it is not created again; a key of
-- another type is not a record), the job was cancelled meanwhile (its retry will find
-- it cancelled and skip it) or it is completed or dead (by another member while this one
-- was paused, or by another group; a replayed dead letter is marked active by jobs_started
-- first).
if KEYS[3] and redis.pcall('GET', KEYS[3]) ~= ARGV[8] then  -- pcall: another type is no lease
  return -1
end
local current = redis.pcall('HGET', KEYS[1], 'status')
if type(current) ~= 'string' or current == 'cancelling' or current == 'cancelled'
    or current == 'completed' or current == 'dead' then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local status = ARGV[3]
redis.call('HSET', KEYS[1], 'status', status, status .. '_at', now, 'updated_at', now,
  'worker', ARGV[4])
if status == 'active' then
  redis.call('HSET', KEYS[1], 'attempts', ARGV[7])
else
  redis.call('HSET', KEYS[1], 'error', ARGV[5], 'error_type', ARGV[6])
end
redis.pcall('ZADD', KEYS[2], now, ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[1] .. ' ' .. status)
return 1
