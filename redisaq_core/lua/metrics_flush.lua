-- Add one recorder's counts to a topic's metrics hash, in one step.
-- KEYS[1]: the metrics hash
-- ARGV[1]: the recorder's flush interval (ms), stored beside each gauge
-- ARGV[2..]: triples (op, field, value):
--   i  add an integer (HINCRBY)
--   f  add a float (HINCRBYFLOAT)
--   m  keep the larger of the stored value and this one
--   g  set a gauge: "<value> <server time ms> <flush interval ms>"
--   d  delete the field
-- Returns the number of triples applied.
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local n = 0
for i = 2, #ARGV - 2, 3 do
  local op, field, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if op == 'i' then
    redis.call('HINCRBY', KEYS[1], field, value)
  elseif op == 'f' then
    redis.call('HINCRBYFLOAT', KEYS[1], field, value)
  elseif op == 'm' then
    local current = tonumber(redis.call('HGET', KEYS[1], field))
    if not current or tonumber(value) > current then
      redis.call('HSET', KEYS[1], field, value)
    end
  elseif op == 'g' then
    redis.call('HSET', KEYS[1], field, value .. ' ' .. now .. ' ' .. ARGV[1])
  elseif op == 'd' then
    redis.call('HDEL', KEYS[1], field)
  end
  n = n + 1
end
return n
