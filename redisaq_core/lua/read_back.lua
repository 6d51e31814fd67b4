-- Read back what a cut read may have been handed: the entries of each stream pending with
-- the consumer, as XREADGROUP with id 0 would, but leaving their delivery counts as they
-- are (a history read counts one more delivery; these count as the read's, which came).
-- KEYS: streams (of one slot)
-- ARGV: group, consumer, count (the most entries per stream)
-- Returns {stream, {{id, {field, value, ...}}, ...}} for each stream with such entries;
-- one trimmed while pending is left out (a claim acknowledges it).
local out = {}
for _, stream in ipairs(KEYS) do
  local entries = {}
  for _, p in ipairs(redis.call('XPENDING', stream, ARGV[1], '-', '+', ARGV[3], ARGV[2])) do
    local entry = redis.call('XRANGE', stream, p[1], p[1])
    if #entry > 0 then
      entries[#entries + 1] = entry[1]
    end
  end
  if #entries > 0 then
    out[#out + 1] = {stream, entries}
  end
end
return out
