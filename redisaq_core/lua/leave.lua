-- Remove a member from its group, if this instance still holds the name.
-- KEYS: members (zset), tokens (hash), members version (string, raised)
-- ARGV: name, token
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  if KEYS[3] then
    if type(redis.pcall('INCR', KEYS[3])) == 'table' then
      redis.call('SET', KEYS[3], 1)  -- another client's value that INCR can't take
    end
  end
  return 1
end
return 0
