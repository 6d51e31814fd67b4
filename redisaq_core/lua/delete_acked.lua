-- Delete entries that every group of the stream has acknowledged (XDELEX ... ACKED, Redis 8.2);
-- entries some group still has pending or unread stay.
-- KEYS: stream
-- ARGV: id, id, ...
-- Returns XDELEX's reply (one code per id).
return redis.call('XDELEX', KEYS[1], 'ACKED', 'IDS', #ARGV, unpack(ARGV))
