-- uses: foreign
-- Take or renew a partition lease.
-- KEYS: lease
-- ARGV: token, ttl_ms, previous_token (may be empty: a static member's earlier instance),
--       mode (optional): "renew" for a lease the caller holds by its own reckoning (taken or
--       renewed less than 0.8 x ttl_ms ago): one GETEX both renews and reads the holder. Were
--       the caller wrong, another holder's lease is extended once; nothing else changes.
-- Returns 1 renewed (it was ours), 2 acquired (it was free or our earlier instance's),
-- 0 held by another member.
local cur
if ARGV[4] == 'renew' then
  cur = redis.pcall('GETEX', KEYS[1], 'PX', ARGV[2])
  if cur == ARGV[1] then
    return 1
  end
else
  cur = redis.pcall('GET', KEYS[1])
  if cur == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
  end
end
if foreign(cur) then
  cur = false  -- a key of another type (another client's) holds no lease: taken over
elseif type(cur) == 'table' and ARGV[4] == 'renew' then
  redis.call('GETEX', KEYS[1], 'PX', ARGV[2])  -- the server's own error: raised as it is
elseif type(cur) == 'table' then
  redis.call('GET', KEYS[1])
end
if (not cur) or (ARGV[3] ~= '' and cur == ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
