-- uses: foreign, count_run
-- Count a handler run of an entry delivered again, just before it runs (see _handling.py),
-- only while the caller holds the partition's lease: a count made after the lease moved on
-- (its round trip held up past a failover, say) would be held against the new owner's runs.
-- The delivery it was counted for is noted beside the count (field "@" .. id), so that a
-- count whose reply was lost can be taken back with the delivery (see give_back.lua).
-- KEYS: the partition's runs hash, its lease
-- ARGV: the entry's id, the runs hash's TTL (s), the member's lease token, its delivery count
-- Returns the count with this run, or -1 when the lease is not the member's (nothing done).
if redis.pcall('GET', KEYS[2]) ~= ARGV[3] then  -- pcall: a key of another type is no lease
  return -1
end
local count = count_run(KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[1], '@' .. ARGV[1], ARGV[4])
return count
