-- uses: foreign
-- Schedule an entry: keep it in its partition's delayed set, scored by its due time (ms of
-- the server's clock), until the partition's owner moves it into the stream (move_due.lua).
-- An entry already due while nothing due waits in the set goes straight to the stream.
-- With a job, its record is created ("scheduled", or "queued" when it went to the stream);
-- with an idempotency marker, a call repeated within the window returns what the first
-- one returned and writes nothing.
-- KEYS: delayed (zset), sequence (string), stream, [job (hash), jobs index (zset)], [marker]
-- ARGV: "in" (ARGV[2] ms from now) or "at" (ARGV[2]: Unix ms), amount, nudge channel,
--       partition, maxlen (0: unbounded), trim ("~", "=" or "ACKED..."), window (seconds;
--       0: no marker), job_id ("": no job), job channel, topic, priority, result_ttl,
--       field, value, ...
-- Returns {created (1 or 0), id, job_id or "", due (ms)}; id is "delayed:<partition>:<n>"
-- for a scheduled entry, the stream entry id for one that went straight to the stream.
redis.replicate_commands()  -- writes after TIME: effects replication (6.2 may be set to verbatim)
local delayed, seq, stream = KEYS[1], KEYS[2], KEYS[3]
local job_id = ARGV[8]
local job, index, marker
local k = 4
if job_id ~= '' then
  job, index, k = KEYS[4], KEYS[5], 6
end
if tonumber(ARGV[7]) > 0 then
  marker = KEYS[k]
  local prior = redis.pcall('GET', marker)
  if type(prior) == 'table' then  -- another client's key of another type is no marker: replaced
    redis.call('DEL', marker)
    prior = false
  end
  if prior then
    local space = string.find(prior, ' ', 1, true)
    if space then
      return {0, string.sub(prior, 1, space - 1), string.sub(prior, space + 1), -1}
    end
    return {0, prior, '', -1}
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if foreign(redis.pcall('ZCARD', delayed)) then
  -- Another client's key of another type holds no delayed entry (move_due.lua passes it
  -- over): it is replaced.
  redis.call('DEL', delayed)
end
local due = tonumber(ARGV[2])
if ARGV[1] == 'in' then
  due = now + due
end
local id, status
if due <= now and #redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 1) == 0 then
  local maxlen = tonumber(ARGV[5])
  if maxlen > 0 and string.sub(ARGV[6], 1, 5) == 'ACKED' then
    id = redis.call('XADD', stream, 'ACKED', 'MAXLEN', '=', maxlen, '*', unpack(ARGV, 13))
  elseif maxlen > 0 then
    id = redis.call('XADD', stream, 'MAXLEN', ARGV[6], maxlen, '*', unpack(ARGV, 13))
  else
    id = redis.call('XADD', stream, '*', unpack(ARGV, 13))
  end
  status = 'queued'
else
  -- Due already, behind due entries that wait: scored now, it goes after them (a member
  -- of the same score sorts by its count, which only grows).
  due = math.max(due, now)
  local function past_any_count()
    -- One past any count the sequence made (server microseconds), so no member made from
    -- it can equal one already in the set.
    local n = tonumber(t[1]) * 1000000 + tonumber(t[2])
    redis.call('DEL', seq)
    redis.call('SET', seq, string.format('%d', n))
    return n
  end
  local n = redis.pcall('INCR', seq)
  if type(n) == 'table' and not foreign(n) then
    n = redis.call('INCR', seq)  -- the server's own error (out of memory): raised as it is
  elseif type(n) == 'table' then
    n = past_any_count()  -- another client's value: written over
  end
  local parts = {string.format('%016x', n)}
  for i = 13, #ARGV do
    parts[#parts + 1] = string.format('%08x', #ARGV[i]) .. ARGV[i]
  end
  local member = table.concat(parts)
  if redis.call('ZADD', delayed, 'NX', due, member) == 0 then
    -- The same member waits already: the sequence was set back (deleted, evicted) since.
    n = past_any_count()
    parts[1] = string.format('%016x', n)
    member = table.concat(parts)
    redis.call('ZADD', delayed, due, member)
  end
  local number = string.format('%d', n)  -- not tostring: a large count would print as 1.8e+15
  id = 'delayed:' .. ARGV[4] .. ':' .. number
  status = 'scheduled'
  if redis.call('ZRANGE', delayed, 0, 0)[1] == member then
    -- The partition's earliest entry now: tell the owners, whose timers may be set later.
    redis.call('PUBLISH', ARGV[3], ARGV[4] .. ' ' .. due)
  end
end
if job then
  redis.call('HSET', job, 'status', status, 'topic', ARGV[10], 'partition', ARGV[4],
    'priority', ARGV[11], 'attempts', 0, 'result_ttl', ARGV[12], 'scheduled_at', now,
    'due_at', due, 'updated_at', now)
  if status == 'queued' then
    redis.call('HSET', job, 'msg_id', id, 'queued_at', now)
  end
  redis.pcall('ZADD', index, now, job_id)
  redis.call('PUBLISH', ARGV[9], job_id .. ' ' .. status)
end
if marker then
  local value = id
  if job then
    value = id .. ' ' .. job_id
  end
  redis.call('SET', marker, value, 'EX', ARGV[7])
end
return {1, id, job_id, due}
