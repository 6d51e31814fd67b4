-- Enqueue an entry unless one was already enqueued under the same idempotency key within
-- the window: the check, the XADD and the marker are one atomic step, so a resent call
-- (a lost reply, a retried request) writes nothing new.
-- KEYS: stream, marker (string: the entry id, expires after the window)
-- ARGV: window (seconds), maxlen (0: unbounded), trim ("~" or "=", or "ACKED..." to keep
--       entries a group has not acknowledged, always exact), field, value, ...
-- Returns {1, id} for a new entry, {0, id of the first} for a repeat (a job's marker holds
-- "<entry id> <job id>").
local prior = redis.pcall('GET', KEYS[2])
if type(prior) == 'table' then  -- another client's key of another type is no marker: replaced
  redis.call('DEL', KEYS[2])
  prior = false
end
if prior then
  local space = string.find(prior, ' ', 1, true)
  return {0, space and string.sub(prior, 1, space - 1) or prior}
end
local id
if tonumber(ARGV[2]) > 0 and string.sub(ARGV[3], 1, 5) == 'ACKED' then
  id = redis.call('XADD', KEYS[1], 'ACKED', 'MAXLEN', '=', ARGV[2], '*', unpack(ARGV, 4))
elseif tonumber(ARGV[2]) > 0 then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], ARGV[2], '*', unpack(ARGV, 4))
else
  id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
end
redis.call('SET', KEYS[2], id, 'EX', ARGV[1])
return {1, id}
