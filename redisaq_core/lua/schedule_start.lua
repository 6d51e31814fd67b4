-- Record a schedule's first tick unless it has one (ZADD NX). With KEYS[2], the stored
-- schedules' definitions: only while the schedule is stored, so that the ticker of a schedule
-- just removed (it learns so at its next reload) does not bring the removed record back.
-- KEYS: ticks (zset), [definitions (hash)]
-- ARGV: name, tick (ms)
-- Returns 1 when recorded, 0 otherwise.
if KEYS[2] and redis.pcall('HEXISTS', KEYS[2], ARGV[1]) == 0 then
  return 0  -- removed (a definitions key of another type is left to Scheduler.list)
end
return redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1])
