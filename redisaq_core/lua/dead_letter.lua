-- uses: foreign, exhausted, settle_job
-- Move one pending entry to the dead-letter stream and acknowledge it, atomically,
-- only while the caller holds the partition's lease. For a job, its record becomes "dead".
-- KEYS: stream, lease, dlq, and for a job: job (hash), jobs index (zset)
-- ARGV: group, token, id, maxlen (0: unbounded), job_id (or ""), channel, worker, error,
--       error_type, delete ("1": delete the entry once every group acknowledged it, as
--       XDELEX ACKED does; Redis 8.2), k, then the origin record (k values: field, value,
--       ...), then the entry's fields as the caller read them, used only if the entry is
--       gone from its stream. The entry's fields are added, each name prefixed "f:"; an
--       entry of more than about 3,500 fields is noted by its field count,
--       "omitted_fields", instead, and is never deleted: it is all that is left of them.
-- A job cancelled meanwhile ("cancelled", or "cancelling" when its worker stopped before
-- settling it) is settled cancelled instead, as jobs_cancelled.lua does: no dead letter.
-- A dead-letter key another client made of another type holds no letter: it is replaced.
-- Returns the dead-letter entry id, 0 when the entry is no longer pending (settled already:
-- a call sent again after its reply was lost writes nothing twice), -1 when the lease is
-- not ours, -2 for a job settled cancelled, or -3 when the dead-letter stream takes no
-- more entries (another client added one of the largest id). Nothing is acknowledged
-- unless the dead letter was written (or the job settled cancelled).
if redis.pcall('GET', KEYS[2]) ~= ARGV[2] then  -- pcall: a key of another type is no lease
  return -1
end
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1) == 0 then
  return 0
end
local status = ARGV[5] ~= '' and redis.pcall('HGET', KEYS[4], 'status')
if status == 'cancelled' or status == 'cancelling' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  if status == 'cancelling' then  -- one "cancelled" already has its time and expiry
    settle_job(KEYS[4], KEYS[5], ARGV[5], 'cancelled', 'cancelled_at', now_ms())
    redis.call('PUBLISH', ARGV[6], ARGV[5] .. ' cancelled')
  end
  if ARGV[10] == '1' then
    redis.call('XDELEX', KEYS[1], 'ACKED', 'IDS', 1, ARGV[3])
  end
  return -2
end
local args = {KEYS[3]}
local maxlen = tonumber(ARGV[4])
if maxlen > 0 then
  args = {KEYS[3], 'MAXLEN', '~', maxlen}
end
args[#args + 1] = '*'
local after = 12 + tonumber(ARGV[11])
for i = 12, after - 1 do
  args[#args + 1] = ARGV[i]
end
local fields, kept = {}, true
local entry = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
if entry[1] then
  fields = entry[1][2]
else  -- trimmed while pending: as the caller read it, if it did
  for i = after, #ARGV do
    fields[#fields + 1] = ARGV[i]
  end
end
if #fields > 0 then
  if #args + #fields <= 7000 then
    for i = 1, #fields, 2 do
      args[#args + 1] = 'f:' .. fields[i]
      args[#args + 1] = fields[i + 1]
    end
  else  -- more than one command's arguments can take here: their count, not their contents
    args[#args + 1] = 'omitted_fields'
    args[#args + 1] = #fields / 2
    kept = false
  end
end
local dl = redis.pcall('XADD', unpack(args))
if foreign(dl) then
  redis.call('DEL', KEYS[3])
  dl = redis.call('XADD', unpack(args))
elseif type(dl) == 'table' then
  if exhausted(KEYS[3]) then
    return -3
  end
  redis.call('XADD', unpack(args))  -- the server's own error: raised as it is
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
if status == 'completed' then  -- by another group: its record stays as that group left it
elseif type(status) == 'string' then  -- a job record (not a key of another type)
  redis.call('HSET', KEYS[4], 'worker', ARGV[7], 'error', ARGV[8], 'error_type', ARGV[9])
  settle_job(KEYS[4], KEYS[5], ARGV[5], 'dead', 'dead_at', now_ms())
  redis.call('PUBLISH', ARGV[6], ARGV[5] .. ' dead')
elseif ARGV[5] ~= '' then  -- no record (deleted, or replaced by another client)
  redis.call('PUBLISH', ARGV[6], ARGV[5] .. ' gone')
end
if ARGV[10] == '1' and kept then  -- last: what came before is written whatever it answers
  redis.call('XDELEX', KEYS[1], 'ACKED', 'IDS', 1, ARGV[3])
end
return dl
