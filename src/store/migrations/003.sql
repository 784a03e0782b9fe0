-- Schema version 3. Frozen.
-- Per-app permission to show declarative push messages as desktop notifications.
-- No row = allowed (the default).
CREATE TABLE notification_permissions (
    app_id  TEXT PRIMARY KEY NOT NULL,
    allowed INTEGER NOT NULL
) WITHOUT ROWID;
