-- Remove a consumer from a stream's group once it has nothing pending (a consumer that left):
-- XGROUP DELCONSUMER would drop its pending entries, so it is never called while there are any.
-- KEYS: stream
-- ARGV: group, consumer
-- Returns 1 when removed, 0 when it still has pending entries (or there is no such group).
local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if not ok or #pending > 0 then
  return 0
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
