-- uses: foreign
-- Move a partition's due delayed entries into its streams, in due order (ties in the order
-- they were scheduled), only while the caller holds the partition's lease (fencing). Each
-- entry moves once: the XADD and the removal from the delayed set are one atomic step, and
-- "due" is judged by the server's clock. A moved job's record becomes "queued".
-- KEYS: lease, jobs index (zset), dlq, then per priority level: delayed (zset), stream;
--       then the job hashes the caller was asked for
-- ARGV: token, levels, limit (entries per level per call), job channel, topic, group,
--       consumer, partition, then one job id per job hash
-- An entry of a job whose hash is not among KEYS stops its level there: the reply asks for
-- it, and the caller calls again with it. A member that is no entry (written by another
-- client) goes to the dead-letter stream (written over if another client made it of another
-- type); a level whose delayed key is of another type holds none and is passed over.
-- Returns {moved, next due (ms; -1: nothing delayed), now (ms), job id wanted, ...}, or
-- {-1} when the lease is not ours (nothing is moved).
redis.replicate_commands()  -- writes after TIME: effects replication (6.2 may be set to verbatim)
if redis.pcall('GET', KEYS[1]) ~= ARGV[1] then  -- pcall: a key of another type is no lease
  return {-1}
end
local levels, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local first_job = 4 + 2 * levels
local jobs = {}
for i = first_job, #KEYS do
  jobs[ARGV[9 + i - first_job]] = KEYS[i]
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function decode(member)
  local fields, job = {}, nil
  local i = 17
  while i <= #member do
    local n = tonumber(string.sub(member, i, i + 7), 16)
    if n == nil or i + 7 + n > #member then
      return nil
    end
    fields[#fields + 1] = string.sub(member, i + 8, i + 7 + n)
    i = i + 8 + n
  end
  if #fields == 0 or #fields % 2 == 1 or #fields > 7000 then  -- more than unpack() takes
    return nil
  end
  for f = 1, #fields, 2 do
    if fields[f] == 'j' then
      job = fields[f + 1]
    end
  end
  return fields, job
end

local moved, next_due, wanted = 0, -1, {}
for level = 0, levels - 1 do
  local delayed, stream = KEYS[4 + 2 * level], KEYS[5 + 2 * level]
  local blocked = false
  local due = redis.pcall('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, limit)
  if due.err then
    due = {}
  end
  for _, member in ipairs(due) do
    local fields, job = decode(member)
    if fields == nil then
      if not blocked then
        local letter = {KEYS[3], '*', 'topic', ARGV[5], 'partition', ARGV[8], 'priority', level,
          'group', ARGV[6], 'msg_id', '', 'deliveries', 0,
          'error', 'not a delayed entry (written by another client)',
          'error_type', 'MalformedEntry', 'consumer', ARGV[7], 'failed_at', now / 1000,
          'f:p', member}
        local written = redis.pcall('XADD', unpack(letter))
        if foreign(written) then
          redis.call('DEL', KEYS[3])
          redis.call('XADD', unpack(letter))
        elseif type(written) == 'table' then
          redis.call('XADD', unpack(letter))  -- the server's own error: raised as it is
        end
        redis.call('ZREM', delayed, member)
      end
    elseif job and not jobs[job] then
      blocked = true
      wanted[#wanted + 1] = job
    elseif not blocked then
      local id = redis.call('XADD', stream, '*', unpack(fields))
      redis.call('ZREM', delayed, member)
      moved = moved + 1
      if job and redis.pcall('HGET', jobs[job], 'status') == 'scheduled' then
        redis.call('HSET', jobs[job], 'status', 'queued', 'msg_id', id, 'queued_at', now,
          'updated_at', now)
        redis.pcall('ZADD', KEYS[2], now, job)
        redis.call('PUBLISH', ARGV[4], job .. ' queued')
      end
    end
  end
  local head = redis.pcall('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  if not head.err and head[2] then
    local score = tonumber(head[2])
    if next_due < 0 or score < next_due then
      next_due = score
    end
  end
end
local reply = {moved, next_due, now}
for _, job in ipairs(wanted) do
  reply[#reply + 1] = job
end
return reply
