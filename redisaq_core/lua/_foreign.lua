-- Prepended to the scripts that name it in their first line ("-- uses: foreign"), see
-- _scripts.Script: one copy of a helper that EVALSHA can't import.
-- Whether a redis.pcall reply is an error for what another client stored (a key of another
-- type, a value the command can't take), not for the server's state (out of memory, ...).
local function foreign(reply)
  local err = type(reply) == 'table' and reply.err
  if not err then
    return false
  end
  return string.sub(err, 1, 9) == 'WRONGTYPE' or string.find(err, 'not an integer', 1, true)
    ~= nil or string.find(err, 'overflow', 1, true) ~= nil
    or string.find(err, 'float', 1, true) ~= nil
    or string.find(err, 'NaN or Infinity', 1, true) ~= nil  -- HINCRBYFLOAT past a finite sum
end

-- redis.call(command, key, ...) where another client may have made the key of another type:
-- such a key is taken as absent (deleted, then the command runs). Other errors are raised.
local function over_foreign(command, key, ...)
  local reply = redis.pcall(command, key, ...)
  if type(reply) == 'table' and reply.err then
    if string.sub(reply.err, 1, 9) == 'WRONGTYPE' then
      redis.call('DEL', key)
    end
    return redis.call(command, key, ...)
  end
  return reply
end

-- redis.call(command, key, ...) reading a key another client may have made of another type:
-- nil for such a key (it holds nothing of ours). Other errors are raised.
local function read_foreign(command, key, ...)
  local reply = redis.pcall(command, key, ...)
  if type(reply) == 'table' and reply.err then
    if string.sub(reply.err, 1, 9) == 'WRONGTYPE' then
      return nil
    end
    return redis.call(command, key, ...)
  end
  return reply
end

-- INCR a version another client may have spoilt (a value INCR can't take, a key of another
-- type): it is written over with 1. The server's own errors are raised as they are.
local function raise_version(key)
  local raised = redis.pcall('INCR', key)
  if foreign(raised) then
    redis.call('SET', key, 1)
  elseif type(raised) == 'table' then
    redis.call('INCR', key)
  end
end
