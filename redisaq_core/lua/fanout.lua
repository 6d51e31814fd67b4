-- uses: exhausted
-- Fan a batch of one source stream out to target streams and acknowledge it, in one step,
-- only while the caller holds the source partition's lease (one Redis server only: the
-- target streams live in other slots).
-- KEYS: source stream, lease, the T target topics' meta hashes, then the target streams
-- ARGV: group, token, T, the T targets' partition counts as the caller knows them,
--       maxlen ("0": no trimming), trim ("~" or "="), "1" to delete what every group of the
--       source stream has acknowledged (XDELEX ... ACKED, Redis 8.2: trim="delete-acked")
--       or "0", then per entry:
--       id, n_writes, then n_writes times: n_streams, stream key index (into KEYS) x n_streams,
--       n_fields, field, value, ...
-- An entry is written only when XACK says it was still pending, so a batch handled again
-- (after a crash, or by a new owner) writes nothing twice.
-- Returns {number of entries fanned out, then the positions (1-based) of the entries found
-- already acknowledged}, {-1} when the lease is not ours, {-2} when a target's partition
-- count differs from the caller's (nothing is written in either case); an error when a
-- target key holds something else than a stream, or a stream whose last id is the largest
-- there is (nothing is written).
if redis.pcall('GET', KEYS[2]) ~= ARGV[2] then  -- pcall: a key of another type is no lease
  return {-1}
end
local targets = tonumber(ARGV[3])
for t = 1, targets do
  if redis.pcall('HGET', KEYS[2 + t], 'partitions') ~= ARGV[3 + t] then
    return {-2}  -- also for a meta key of another type: the caller reads the counts again
  end
end
-- A failed XADD would leave the batch half written, acknowledged: check the targets first.
for k = 3 + targets, #KEYS do
  local kind = redis.call('TYPE', KEYS[k])['ok']
  if kind ~= 'stream' and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE fan-out target ' .. KEYS[k] .. ' is a ' .. kind)
  elseif kind == 'stream' and exhausted(KEYS[k]) then
    return redis.error_reply('ERR fan-out target ' .. KEYS[k] .. ' can take no more entries')
  end
end
local maxlen, trim, delete = ARGV[4 + targets], ARGV[5 + targets], ARGV[6 + targets] == '1'
local i = 7 + targets
local n = #ARGV
local out = {0}
local position = 0
while i <= n do
  position = position + 1
  -- XACK's reply says whether the entry was still pending (XACKDEL's does not: it answers
  -- 2 for one acknowledged before that another group holds).
  local fresh = redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1
  if delete then
    redis.call('XDELEX', KEYS[1], 'ACKED', 'IDS', 1, ARGV[i])
  end
  local writes = tonumber(ARGV[i + 1])
  i = i + 2
  for _ = 1, writes do
    local streams = tonumber(ARGV[i])
    local nfields = tonumber(ARGV[i + 1 + streams])
    if fresh then
      local first, last = i + 2 + streams, i + 1 + streams + nfields
      for s = i + 1, i + streams do
        local key = KEYS[tonumber(ARGV[s])]
        if maxlen == '0' then
          redis.call('XADD', key, '*', unpack(ARGV, first, last))
        else
          redis.call('XADD', key, 'MAXLEN', trim, maxlen, '*', unpack(ARGV, first, last))
        end
      end
    end
    i = i + 2 + streams + nfields
  end
  if fresh then
    out[1] = out[1] + 1
  else
    out[#out + 1] = position
  end
end
return out
