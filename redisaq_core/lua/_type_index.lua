-- Add a service to its type's index (a set); another client's key of another type there
-- is written over, the server's own errors are raised as they are.
local function add_to_type_index(tkey, id)
  local added = redis.pcall('SADD', tkey, id)
  if type(added) == 'table' and string.sub(added.err, 1, 9) == 'WRONGTYPE' then
    redis.call('DEL', tkey)
    redis.call('SADD', tkey, id)
  elseif type(added) == 'table' then
    redis.call('SADD', tkey, id)
  end
end
