-- Put dead letters back on their partition stream and delete them from the dead-letter stream.
-- KEYS: dlq, stream
-- ARGV: id, id, ... (dead-letter ids; unknown ones are skipped, and so are entries of more
--       original fields than one XADD here carries: 7,000 values, as dead_letter.lua writes)
-- Returns the number replayed.
local n = 0
for i = 1, #ARGV do
  local found = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #found == 1 then
    local fields = found[1][2]
    local original = {}
    for j = 1, #fields, 2 do
      local name = fields[j]
      if string.sub(name, 1, 2) == 'f:' then
        original[#original + 1] = string.sub(name, 3)
        original[#original + 1] = fields[j + 1]
      end
    end
    if #original + 2 <= 7000 then
      if #original > 0 then
        redis.call('XADD', KEYS[2], '*', unpack(original))
      end
      redis.call('XDEL', KEYS[1], ARGV[i])
      n = n + 1
    end
  end
end
return n
