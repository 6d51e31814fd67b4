-- uses: foreign
-- Store the worker statuses a HealthMonitor computed, only for services that still have a
-- record (one removed in the meantime gets no status left behind).
-- KEYS: worker_status (hash; one of another type is replaced)
-- ARGV: base, service_id, status, service_id, status, ...
-- Returns the number of statuses written.
local base = ARGV[1]
local written = 0
for i = 2, #ARGV, 2 do
  if redis.call('EXISTS', base .. ':service:' .. ARGV[i]) == 1 then
    over_foreign('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    written = written + 1
  else
    over_foreign('HDEL', KEYS[1], ARGV[i])
  end
end
return written
