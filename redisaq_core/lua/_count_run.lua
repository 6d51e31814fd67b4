-- Prepended to the scripts that name it in their first line ("-- uses: foreign, count_run").
-- Count a handler run of entry `id` in a partition's runs hash `runs`, which outlives its
-- last change by `ttl` seconds; returns the count with this run. A count another client
-- spoilt (a field that is no integer or at the largest one, a key that is no hash) is
-- written over with 1: this run is the first counted. The server's own errors are raised.
local function count_run(runs, id, ttl)
  local count = redis.pcall('HINCRBY', runs, id, 1)
  if type(count) == 'table' then
    if not foreign(count) then
      redis.call('HINCRBY', runs, id, 1)  -- the server's own error, raised
    end
    if string.sub(count.err, 1, 9) == 'WRONGTYPE' then
      redis.call('DEL', runs)
    end
    redis.call('HSET', runs, id, 1)
    count = 1
  end
  redis.call('EXPIRE', runs, ttl)
  return count
end
