-- Count a group's undelivered entries of one stream, for servers whose XINFO GROUPS has no
-- "lag" (Redis < 7.0) or reports it as unknown.
-- KEYS[1]: the stream
-- ARGV[1]: the group's last-delivered-id; ARGV[2]: the most entries to count one by one
-- Returns {count, exact}: exact is 0 when more than ARGV[2] entries follow the last
-- delivered one while older entries remain, and count is then ARGV[2] (a lower bound).
local cap = tonumber(ARGV[2])
local n = #redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', cap)
if n < cap then
  return {n, 1}
end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
if not first then
  return {0, 1}
end
local fms, fseq = string.match(first[1], '^(%d+)-(%d+)$')
local lms, lseq = string.match(ARGV[1], '^(%d+)-(%d+)$')
fms, fseq, lms, lseq = tonumber(fms), tonumber(fseq), tonumber(lms), tonumber(lseq)
if lms < fms or (lms == fms and lseq < fseq) then
  -- Nothing left in the stream was delivered: all of it is lag.
  return {redis.call('XLEN', KEYS[1]), 1}
end
return {n, 0}
