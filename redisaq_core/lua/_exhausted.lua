-- Prepended to the scripts that name it in their first line ("-- uses: exhausted").
-- Whether a stream can take no more entries: its last id is the largest there is (another
-- client added an entry of that id), so every XADD with "*" fails there.
local function exhausted(stream)
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      return info[i + 1] == '18446744073709551615-18446744073709551615'
    end
  end
  return false
end
