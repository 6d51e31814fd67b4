-- Put dead letters back on their partition stream and delete them from the dead-letter stream.
-- A dead job's record is made "queued" again, with the new entry's id, no expiry and no
-- error, and announced (so waiters wait for the run to come); a record gone (expired) is
-- made again. A record in any other state (another group completed the job, say) is left
-- as it is, and so is a key of another type.
-- KEYS: dlq, stream, jobs index, then the record of each letter that is a job's, in order
-- ARGV: channel, topic, partition, priority, result_ttl (s) of a record made again, then
--       per letter: its id, "1" when it is a job's (its record follows in KEYS) or "0".
--       Unknown ids are skipped, and so are entries of more original fields than one XADD
--       here carries: 7,000 values, as dead_letter.lua writes.
-- Returns the number replayed.
local n, record = 0, 3
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 6, #ARGV, 2 do
  local job = nil
  if ARGV[i + 1] == '1' then
    record = record + 1
    job = KEYS[record]
  end
  local found = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #found == 1 then
    local fields = found[1][2]
    local original, job_id = {}, nil
    for j = 1, #fields, 2 do
      local name = fields[j]
      if string.sub(name, 1, 2) == 'f:' then
        original[#original + 1] = string.sub(name, 3)
        original[#original + 1] = fields[j + 1]
        if name == 'f:j' then
          job_id = fields[j + 1]
        end
      end
    end
    if #original + 2 <= 7000 then
      local id = nil
      if #original > 0 then
        id = redis.call('XADD', KEYS[2], '*', unpack(original))
      end
      redis.call('XDEL', KEYS[1], ARGV[i])
      n = n + 1
      local status = job and id and job_id and redis.pcall('HGET', job, 'status')
      if status == false or status == 'dead' then
        if status == false then
          redis.call('HSET', job, 'topic', ARGV[2], 'partition', ARGV[3], 'priority', ARGV[4],
            'attempts', 0, 'result_ttl', ARGV[5])
        end
        redis.call('HDEL', job, 'dead_at', 'error', 'error_type', 'worker')
        redis.call('HSET', job, 'status', 'queued', 'msg_id', id, 'queued_at', now,
          'updated_at', now)
        redis.call('PERSIST', job)
        redis.pcall('ZADD', KEYS[3], now, job_id)
        redis.call('PUBLISH', ARGV[1], job_id .. ' queued')
      end
    end
  end
end
return n
