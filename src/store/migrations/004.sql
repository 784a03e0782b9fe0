-- Schema version 4. Frozen.
-- The owner loop asks for the earliest expiry after every input, and expiry deletes by
-- it: without an index each ask read every pending message (3 KiB payloads included).
CREATE INDEX messages_by_expiry ON messages (received + ttl * 1000);
