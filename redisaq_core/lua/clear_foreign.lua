-- Delete a key another client made of another type, only if it still is (a concurrent caller
-- may have written it over with the right type meanwhile).
-- KEYS: the key
-- ARGV: the type it should have ("zset", "hash", ...)
-- Returns 1 when deleted, 0 otherwise.
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'none' and kind ~= ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
