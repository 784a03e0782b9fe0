-- Schema version 2. Frozen.
-- UnifiedPush registrations live beside Web Push subscriptions, and each subscription
-- remembers which sandbox its owner's app id came from (to expire Flatpak apps that were
-- uninstalled).

-- 'webpush' (native API, decrypted payloads) or 'unifiedpush' (raw RFC 8291 bodies).
ALTER TABLE subscriptions ADD COLUMN kind TEXT NOT NULL DEFAULT 'webpush';
-- UnifiedPush D-Bus API version the app registered with: 1 or 2 (0 for webpush).
ALTER TABLE subscriptions ADD COLUMN up_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE subscriptions ADD COLUMN description TEXT NOT NULL DEFAULT '';
-- 'flatpak', 'snap' or '' (unsandboxed).
ALTER TABLE subscriptions ADD COLUMN sandbox TEXT NOT NULL DEFAULT '';
