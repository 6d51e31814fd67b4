-- Give up a partition lease if it is still ours.
-- KEYS: lease
-- ARGV: token
if redis.pcall('GET', KEYS[1]) == ARGV[1] then  -- pcall: a key of another type is no lease
  return redis.call('DEL', KEYS[1])
end
return 0
