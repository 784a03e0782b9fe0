-- Schema version 6. Frozen.
-- A `seen` entry is kept as long as the server could send its message again: until the
-- message's TTL ends (at most 30 days, autopush's maximum), not a flat 7 days after it
-- came. Entries from before this version get the maximum.
ALTER TABLE seen ADD COLUMN expires INTEGER NOT NULL DEFAULT 0;
UPDATE seen SET expires = at + 2592000000;
DROP INDEX seen_by_time;
CREATE INDEX seen_by_expiry ON seen (expires);
