-- Give back entries this member was delivered but never handed to a handler (a read ahead
-- whose partition could not take them): they stay in its pending list with their delivery
-- count set back to 0, so that whoever claims them next counts that claim as their first
-- delivery. Only while the caller holds the partition's lease.
-- KEYS: stream, lease
-- ARGV: group, token, consumer, the entry ids separated by spaces
-- Returns the number given back, or -1 when the lease is not ours (nothing is changed).
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return -1
end
local ids, n = {}, 0
for id in string.gmatch(ARGV[4], '%S+') do
  n = n + 1
  ids[n] = id
end
local given = 0
for i = 1, n, 4096 do
  local args = {KEYS[1], ARGV[1], ARGV[3], 0}
  for j = i, math.min(i + 4095, n) do
    args[#args + 1] = ids[j]
  end
  args[#args + 1] = 'RETRYCOUNT'
  args[#args + 1] = 0
  args[#args + 1] = 'JUSTID'
  given = given + #redis.call('XCLAIM', unpack(args))
end
return given
