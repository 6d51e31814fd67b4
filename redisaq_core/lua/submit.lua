-- Enqueue a job: add its entry to the partition stream and create its status record,
-- atomically, then announce it.
-- KEYS: stream, job (hash), jobs index (zset)
-- ARGV: maxlen (0: unbounded), trim ("~" or "=", or "ACKED..." to keep entries a group has
--       not acknowledged, always exact: Redis 8.2 trims nothing with "~" and ACKED), job_id, channel, topic, partition,
--       priority, result_ttl, field, value, ...
-- Returns the entry id.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id
if tonumber(ARGV[1]) > 0 and string.sub(ARGV[2], 1, 5) == 'ACKED' then
  id = redis.call('XADD', KEYS[1], 'ACKED', 'MAXLEN', '=', ARGV[1], '*', unpack(ARGV, 9))
elseif tonumber(ARGV[1]) > 0 then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], ARGV[1], '*', unpack(ARGV, 9))
else
  id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 9))
end
redis.call('HSET', KEYS[2],
  'status', 'queued', 'topic', ARGV[5], 'partition', ARGV[6], 'priority', ARGV[7],
  'msg_id', id, 'attempts', 0, 'result_ttl', ARGV[8], 'queued_at', now, 'updated_at', now)
redis.call('ZADD', KEYS[3], now, ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[3] .. ' queued')
return id
