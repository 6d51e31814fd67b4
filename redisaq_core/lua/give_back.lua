-- Give back entries this member was delivered but never handed to a handler (a read ahead
-- whose partition could not take them): those still pending with it keep their place, with
-- their delivery count set back to 0, so that whoever claims them next counts that claim
-- as their first delivery. Only while the caller holds the partition's lease.
-- KEYS: stream, lease
-- ARGV: group, token, consumer, entry id, entry id, ...
-- Returns {given back, gone} (gone: trimmed while pending; Redis 7+ drops them from the
-- pending list here), or -1 when the lease is not ours (nothing is changed).
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return -1
end
local args = {KEYS[1], ARGV[1], ARGV[3], 0}
for i = 4, #ARGV do
  -- Only its own: an entry another member claimed meanwhile has a count of its own.
  if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[3]) > 0 then
    args[#args + 1] = ARGV[i]
  end
end
local mine = #args - 4
if mine == 0 then
  return {0, 0}
end
args[#args + 1] = 'RETRYCOUNT'
args[#args + 1] = 0
args[#args + 1] = 'JUSTID'
local given = #redis.call('XCLAIM', unpack(args))
return {given, mine - given}
