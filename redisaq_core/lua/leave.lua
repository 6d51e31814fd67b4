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
  over_foreign('ZREM', KEYS[1], ARGV[1])  -- no member set: the members' beats write it anew
  redis.call('HDEL', KEYS[2], ARGV[1])
  if KEYS[3] then
    raise_version(KEYS[3])
  end
  return 1
end
return 0
