-- Enqueue a job: add its entry to the partition stream and create its status record,
-- atomically, then announce it. With an idempotency marker (KEYS[4]) a job already
-- submitted under the same key within the window is returned instead, and nothing is written.
-- KEYS: stream, job (hash), jobs index (zset), [marker (string "<entry id> <job id>")]
-- ARGV: maxlen (0: unbounded), trim ("~" or "=", or "ACKED..." to keep entries a group has
--       not acknowledged, always exact: Redis 8.2 trims nothing with "~" and ACKED), job_id,
--       channel, topic, partition, priority, result_ttl, window (seconds; 0 without a
--       marker), field, value, ...
-- Returns the entry id; with a marker, {1, entry id, job id} for a new job and
-- {0, entry id, job id} of the first for a repeat (job id "": the key's first call was
-- a plain enqueue).
if KEYS[4] then
  local prior = redis.pcall('GET', KEYS[4])
  if type(prior) == 'table' then  -- another client's key of another type is no marker: replaced
    redis.call('DEL', KEYS[4])
    prior = false
  end
  if prior then
    local space = string.find(prior, ' ', 1, true)
    if space then
      return {0, string.sub(prior, 1, space - 1), string.sub(prior, space + 1)}
    end
    return {0, prior, ''}
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id
if tonumber(ARGV[1]) > 0 and string.sub(ARGV[2], 1, 5) == 'ACKED' then
  id = redis.call('XADD', KEYS[1], 'ACKED', 'MAXLEN', '=', ARGV[1], '*', unpack(ARGV, 10))
elseif tonumber(ARGV[1]) > 0 then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], ARGV[1], '*', unpack(ARGV, 10))
else
  id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 10))
end
redis.call('HSET', KEYS[2],
  'status', 'queued', 'topic', ARGV[5], 'partition', ARGV[6], 'priority', ARGV[7],
  'msg_id', id, 'attempts', 0, 'result_ttl', ARGV[8], 'queued_at', now, 'updated_at', now)
redis.pcall('ZADD', KEYS[3], now, ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[3] .. ' queued')
if KEYS[4] then
  redis.call('SET', KEYS[4], id .. ' ' .. ARGV[3], 'EX', ARGV[9])
  return {1, id, ARGV[3]}
end
return id
