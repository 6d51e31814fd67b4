-- uses: foreign, count_run, settle_job
-- Claim again the failed message heading a partition, for its retry (delivery count + 1),
-- only while the caller holds the partition's lease: XCLAIM looks at no owner, so a member
-- whose lease moved on would take the entry from its new owner. With counting, the retry
-- is counted as a handler run in the partition's runs hash (count_run).
-- Sent again after its reply was lost, a retry already made is not made again: when the
-- entry's counts are those it left (its delivery count one past the member's, and its runs
-- one past the member's count), nothing is claimed or counted, and the reply is the one
-- that was lost. Only then: another instance of a static member name, claiming under the
-- same name, can raise both counts as well.
-- A job whose entry is found gone (trimmed while it waited for its retry) ends "dead"
-- (or "cancelled", when cancelled while it waited): nothing else would settle its record.
-- KEYS: stream, lease, the partition's runs hash, and for a job: its record, jobs index
-- ARGV: group, token, consumer, id, "1" to count the run or "0", the runs hash's TTL (s),
--       when sent again: the entry's delivery count as the member knows it and its runs
--       counted so far (0: none); else "" and ""; for a job: channel, job id
-- Returns -1 when the lease is not ours (nothing is changed); else {alive, runs}: alive 0
-- when the entry's data is gone (trimmed, or no longer pending), runs the count with this
-- run (0 when not counted).
if redis.pcall('GET', KEYS[2]) ~= ARGV[2] then  -- pcall: a key of another type is no lease
  return -1
end
local function gone(alive)
  if alive == 1 or not KEYS[4] then
    return
  end
  local status = redis.pcall('HGET', KEYS[4], 'status')
  local now = now_ms()
  if status == 'failed' or status == 'active' or status == 'queued' then
    redis.call('HSET', KEYS[4], 'worker', ARGV[3], 'error_type', 'EntryTrimmed',
      'error', 'its entry was trimmed from the stream before its retry')
    settle_job(KEYS[4], KEYS[5], ARGV[10], 'dead', 'dead_at', now)
    redis.call('PUBLISH', ARGV[9], ARGV[10] .. ' dead')
  elseif status == 'cancelling' then
    settle_job(KEYS[4], KEYS[5], ARGV[10], 'cancelled', 'cancelled_at', now)
    redis.call('PUBLISH', ARGV[9], ARGV[10] .. ' cancelled')
  end
end
local mine = {}
if ARGV[7] ~= '' then
  mine = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[4], ARGV[4], 1, ARGV[3])
end
if #mine > 0 and tonumber(mine[1][4]) == tonumber(ARGV[7]) + 1 then
  local runs = 0
  if ARGV[5] == '1' then
    runs = tonumber(redis.pcall('HGET', KEYS[3], ARGV[4]))  -- pcall: a key of another type
  end
  if runs == (ARGV[5] == '1' and tonumber(ARGV[8]) + 1 or 0) then
    local alive = #redis.call('XRANGE', KEYS[1], ARGV[4], ARGV[4]) > 0 and 1 or 0
    gone(alive)
    return {alive, runs}
  end
end
local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[4])
local alive = 0
if #claimed > 0 and claimed[1] and claimed[1][2] then  -- Redis 6.2: a trimmed one is nil
  alive = 1
end
local runs = 0
if ARGV[5] == '1' then
  runs = count_run(KEYS[3], ARGV[4], ARGV[6])
end
gone(alive)
return {alive, runs}
