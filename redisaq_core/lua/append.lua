-- Append entries to one stream in one call (a producer's batch), each with its own XADD.
-- KEYS: stream
-- ARGV: the number k of XADD options, those k options (what goes between the key and the
--       id, such as MAXLEN ~ 100000), then per entry: its number n of field and value
--       arguments, then those n
-- Returns the entry ids, in order. A failed XADD (the server out of memory) ends the call
-- with its error; the entries before it stay written.
local k = tonumber(ARGV[1])
local call = {'XADD', KEYS[1]}
for j = 1, k do
  call[2 + j] = ARGV[1 + j]
end
local base = k + 3
call[base] = '*'
local ids = {}
local i = k + 2
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  for j = 1, n do
    call[base + j] = ARGV[i + j]
  end
  ids[#ids + 1] = redis.call(unpack(call, 1, base + n))
  i = i + n + 1
end
return ids
