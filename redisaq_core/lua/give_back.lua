-- uses: foreign
-- Give back entries this member was delivered but never handed to a handler (a read ahead
-- whose partition could not take them, entries held behind a failure when the partition is
-- given up, the rest of a batch cut off at the lease's deadline, a run counted just before
-- the lease was found gone): those still pending with it keep their place, their delivery
-- count set back to what it was before that delivery, so that whoever claims them next
-- counts that claim as the delivery that never ran.
-- A run counted in the partition's runs hash for an entry whose handler then never ran is
-- taken back: the entry's field set back to the runs it had before (none: removed).
-- No lease is needed: an entry still pending with this member has been claimed by no one
-- since (a claim makes it the claimer's), so no other member's runs or deliveries are in
-- its counts; the member gives back before it claims anything itself.
-- KEYS: stream, the partition's runs hash
-- ARGV: group, consumer, k, then k pairs (id, runs before), then per entry: its id, the
--       delivery count to set
-- Returns {given back, gone} (gone: trimmed while pending; Redis 7+ drops them from the
-- pending list here); {0, 0} when the stream or its group is gone.
-- A stream or group deleted meanwhile (or another client's key of another type in the
-- stream's place) holds nothing pending with this member: nothing to give back.
local summary = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(summary) == 'table' and summary.err then
  if string.sub(summary.err, 1, 7) == 'NOGROUP' or string.sub(summary.err, 1, 9) == 'WRONGTYPE' then
    return {0, 0}
  end
  redis.call('XPENDING', KEYS[1], ARGV[1])  -- the server's own error, raised
end
local first = 4 + 2 * tonumber(ARGV[3])
local runs = {}
for i = 4, first - 1, 2 do
  runs[ARGV[i]] = ARGV[i + 1]
end
local by_count, counts = {}, {}
local mine = 0
for i = first, #ARGV, 2 do
  -- Only its own: an entry another member claimed meanwhile has counts of its own.
  if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2]) > 0 then
    local before = runs[ARGV[i]]
    if before == '0' then
      redis.pcall('HDEL', KEYS[2], ARGV[i])  -- pcall: another client's key may be no hash
    elseif before then
      local set = redis.pcall('HSET', KEYS[2], ARGV[i], before)
      if type(set) == 'table' and not foreign(set) then
        -- The server's own error (out of memory, before anything was written): raised, so
        -- that nothing is given back and the caller keeps it owed.
        redis.call('HSET', KEYS[2], ARGV[i], before)
      end
    end
    local ids = by_count[ARGV[i + 1]]
    if not ids then
      ids = {}
      by_count[ARGV[i + 1]] = ids
      counts[#counts + 1] = ARGV[i + 1]
    end
    ids[#ids + 1] = ARGV[i]
    mine = mine + 1
  end
end
local given = 0
for _, count in ipairs(counts) do
  local ids = by_count[count]
  for j = 1, #ids, 512 do
    local args = {KEYS[1], ARGV[1], ARGV[2], 0}
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
