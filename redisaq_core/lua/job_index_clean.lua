-- Drop job index entries whose records are gone (expired after result_ttl), keeping any
-- entry that changed since it was listed.
-- KEYS[1]: the partition's jobs index (zset); KEYS[2..n]: the job records (hashes)
-- ARGV: for each record, its job id and the index score it was listed with
-- Returns how many entries were removed.
local removed = 0
for i = 2, #KEYS do
  local id = ARGV[2 * i - 3]
  local listed = tonumber(ARGV[2 * i - 2])
  if redis.call('EXISTS', KEYS[i]) == 0 then
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score and tonumber(score) == listed then
      removed = removed + redis.call('ZREM', KEYS[1], id)
    end
  end
end
return removed
