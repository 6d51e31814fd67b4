-- Push items onto every output list of a list fan-out and take them out of its pending
-- list, in one step. Every key is checked first: a MULTI goes on past a failed LPUSH, and
-- would take an item out of the pending list that one output never got.
-- KEYS: pending, then the output lists
-- ARGV: LREM count (1: from the head, -1: from the tail), then the items, oldest first
-- Returns the number of items pushed, or an error naming a key of another type (nothing
-- is written then).
for k = 1, #KEYS do
  local kind = redis.call('TYPE', KEYS[k])['ok']
  if kind ~= 'list' and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[k] .. ' is a ' .. kind .. ', not a list')
  end
end
local n = #ARGV
for k = 2, #KEYS do
  for i = 2, n, 1000 do  -- unpack takes a few thousand values at most
    redis.call('LPUSH', KEYS[k], unpack(ARGV, i, math.min(i + 999, n)))
  end
end
for i = 2, n do
  redis.call('LREM', KEYS[1], ARGV[1], ARGV[i])
end
return n - 1
