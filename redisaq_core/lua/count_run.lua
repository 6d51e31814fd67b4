-- uses: foreign, count_run
-- Count a handler run of an entry delivered again, just before it runs (see _handling.py).
-- KEYS: the partition's runs hash
-- ARGV: the entry's id, the runs hash's TTL (s)
-- Returns the count with this run.
return count_run(KEYS[1], ARGV[1], ARGV[2])
