-- Remove a member from its group, if this instance still holds the name.
-- KEYS: members (zset), tokens (hash), members version (string, raised)
-- ARGV: name, token
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  if KEYS[3] then
    local raised = redis.pcall('INCR', KEYS[3])
    local err = type(raised) == 'table' and raised.err
    if err and (string.sub(err, 1, 9) == 'WRONGTYPE'
        or string.find(err, 'not an integer', 1, true)) then
      redis.call('SET', KEYS[3], 1)  -- another client's value that INCR can't take
    elseif err then
      redis.call('INCR', KEYS[3])  -- the server's own error: raised as it is
    end
  end
  return 1
end
return 0
