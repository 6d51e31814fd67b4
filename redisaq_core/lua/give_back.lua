-- uses: foreign
-- Give back entries this member was delivered but never handed to a handler (a read ahead
-- whose partition could not take them, entries held behind a failure when the partition is
-- given up, the rest of a batch cut off at the lease's deadline, a run counted just before
-- the lease was found gone): those still pending with it keep their place, their delivery
-- count set back to what it was before that delivery, so that whoever claims them next
-- counts that claim as the delivery that never ran.
-- A run counted in the partition's runs hash for an entry whose handler then never ran is
-- taken back: the entry's field set back to the runs it had before (none: removed). One
-- whose count's reply was lost (runs before "?") is taken back if the count noted there
-- was made for this delivery (field "@" .. id, see count_run.lua).
-- While the caller holds the partition's lease, every entry still pending with it is given
-- back. Without the lease (found gone), an entry is given back only if its counts are still
-- the ones this member's delivery left (its delivery count, and its runs if one was
-- counted): another instance of the same member name (a static restart) may have claimed
-- it since, and that claim leaves it pending with the same name.
-- KEYS: stream, lease, the partition's runs hash
-- ARGV: group, token, consumer, k, then k triples (id, runs before, runs now; "?" and the
--       delivery count for a count whose reply was lost), then per entry: its id, its
--       delivery count now, the delivery count to set
-- Returns {given back, gone} (gone: trimmed while pending; Redis 7+ drops them from the
-- pending list here); {0, 0} when the stream or its group is gone.
local summary = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(summary) == 'table' and summary.err then
  -- A stream or group deleted meanwhile (or another client's key of another type in the
  -- stream's place) holds nothing pending with this member.
  if string.sub(summary.err, 1, 7) == 'NOGROUP' or string.sub(summary.err, 1, 9) == 'WRONGTYPE' then
    return {0, 0}
  end
  redis.call('XPENDING', KEYS[1], ARGV[1])  -- the server's own error, raised
end
local leased = redis.pcall('GET', KEYS[2]) == ARGV[2]  -- pcall: a key of another type is no lease
local first = 5 + 3 * tonumber(ARGV[4])
local runs = {}
for i = 5, first - 1, 3 do
  runs[ARGV[i]] = {ARGV[i + 1], ARGV[i + 2]}
end
local by_count, counts = {}, {}
local mine = 0
for i = first, #ARGV, 3 do
  local id = ARGV[i]
  -- Only its own: an entry another member claimed meanwhile has counts of its own.
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[3])
  local run = runs[id]
  local ok = #pending > 0
  if ok and not leased then
    ok = tonumber(pending[1][4]) == tonumber(ARGV[i + 1])
    if ok and run and run[1] ~= '?' then
      local now = redis.pcall('HGET', KEYS[3], id)
      ok = type(now) == 'string' and tonumber(now) == tonumber(run[2])
    end
  end
  if ok and run and run[1] == '?' then
    if redis.pcall('HGET', KEYS[3], '@' .. id) == run[2] then  -- counted for this delivery
      local now = redis.pcall('HINCRBY', KEYS[3], id, -1)  -- pcall: spoilt, it stays so
      redis.pcall('HDEL', KEYS[3], '@' .. id)
      if type(now) == 'number' and now <= 0 then
        redis.pcall('HDEL', KEYS[3], id)
      end
    end
  elseif ok and run then
    if run[1] == '0' then
      redis.pcall('HDEL', KEYS[3], id)  -- pcall: another client's key may be no hash
    else
      local set = redis.pcall('HSET', KEYS[3], id, run[1])
      if type(set) == 'table' and not foreign(set) then
        -- The server's own error (out of memory, before anything was written): raised, so
        -- that nothing is given back and the caller keeps it owed.
        redis.call('HSET', KEYS[3], id, run[1])
      end
    end
    redis.pcall('HDEL', KEYS[3], '@' .. id)  -- the count of this delivery, taken back
  end
  if ok then
    local ids = by_count[ARGV[i + 2]]
    if not ids then
      ids = {}
      by_count[ARGV[i + 2]] = ids
      counts[#counts + 1] = ARGV[i + 2]
    end
    ids[#ids + 1] = id
    mine = mine + 1
  end
end
local given = 0
for _, count in ipairs(counts) do
  local ids = by_count[count]
  for j = 1, #ids, 512 do
    local args = {KEYS[1], ARGV[1], ARGV[3], 0}
    for k = j, math.min(j + 511, #ids) do
      args[#args + 1] = ids[k]
    end
    args[#args + 1] = 'RETRYCOUNT'
    args[#args + 1] = count
    args[#args + 1] = 'JUSTID'
    given = given + #redis.call('XCLAIM', unpack(args))
  end
end
return {given, mine - given}
