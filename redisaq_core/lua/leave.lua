-- uses: foreign
-- Remove a member from its group, if this instance still holds the name.
-- KEYS: members (zset), tokens (hash), members version (string, raised)
-- ARGV: name, token
-- A tokens key another client made of another type names no holder: it is deleted and the
-- member removed (a live instance of the name adds itself again on its next beat).
local holder = redis.pcall('HGET', KEYS[2], ARGV[1])
if foreign(holder) then
  redis.call('DEL', KEYS[2])
  holder = ARGV[2]
elseif type(holder) == 'table' then
  holder = redis.call('HGET', KEYS[2], ARGV[1])  -- the server's own error: raised as it is
end
if holder == ARGV[2] then
  if foreign(redis.pcall('ZREM', KEYS[1], ARGV[1])) then
    redis.call('DEL', KEYS[1])  -- no member set: the members' beats write it anew
  end
  redis.call('HDEL', KEYS[2], ARGV[1])
  if KEYS[3] then
    local raised = redis.pcall('INCR', KEYS[3])
    if foreign(raised) then
      redis.call('SET', KEYS[3], 1)  -- another client's value that INCR can't take
    elseif type(raised) == 'table' then
      redis.call('INCR', KEYS[3])  -- the server's own error: raised as it is
    end
  end
  return 1
end
return 0
