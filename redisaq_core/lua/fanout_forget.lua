-- Shorten the life of fan-out idempotency records whose source entries are acknowledged
-- (Redis Cluster). They are kept a little longer, for a slow former owner's late write.
-- KEYS: records (one slot)
-- ARGV: ttl (ms)
-- Returns the number of records found.
local found = 0
for _, key in ipairs(KEYS) do
  found = found + redis.call('PEXPIRE', key, ARGV[1])
end
return found
