-- Schema version 5. Frozen.
-- Whether the daemon showed a message as a desktop notification, so an app that fetches
-- it later can tell (FetchMessages meta `notification_shown`) and not show it again.
ALTER TABLE messages ADD COLUMN shown INTEGER NOT NULL DEFAULT 0;
