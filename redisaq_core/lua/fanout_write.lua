-- uses: exhausted
-- Write entries fanned out from a source partition into one target stream, each at most
-- once (Redis Cluster: the target lives in another slot than the source).
-- KEYS: target stream, then one idempotency record per entry (same slot as the stream)
-- ARGV: maxlen ("0": no trimming), trim ("~" or "="), record ttl (ms), then per entry:
--       n_fields, field, value, ...
-- An entry whose record exists was written before (by this bridge or by an earlier owner of
-- the source partition) and is skipped; a key of another type in its place is no record.
-- Returns the number of entries written, or an error (nothing written) when the target key
-- holds something else than a stream, or a stream whose last id is the largest there is.
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'stream' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE fan-out target ' .. KEYS[1] .. ' is a ' .. kind)
elseif kind == 'stream' and exhausted(KEYS[1]) then  -- its XADDs would fail past the records
  return redis.error_reply('ERR fan-out target ' .. KEYS[1] .. ' can take no more entries')
end
local maxlen, trim, ttl = ARGV[1], ARGV[2], ARGV[3]
local i = 4
local written = 0
for e = 2, #KEYS do
  local nfields = tonumber(ARGV[i])
  local fresh = redis.call('SET', KEYS[e], '1', 'NX', 'PX', ttl)
  if not fresh and redis.call('TYPE', KEYS[e]).ok ~= 'string' then
    -- another client's key of another type is no record of ours: written over
    fresh = redis.call('SET', KEYS[e], '1', 'PX', ttl)
  end
  if fresh then
    if maxlen == '0' then
      redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + nfields))
    else
      redis.call('XADD', KEYS[1], 'MAXLEN', trim, maxlen, '*', unpack(ARGV, i + 1, i + nfields))
    end
    written = written + 1
  end
  i = i + 1 + nfields
end
return written
