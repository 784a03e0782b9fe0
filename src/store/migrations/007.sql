-- Schema version 7. Frozen.
-- Why a subscription last expired (quota, server, app-removed), for its app to read later
-- (Subscription.ExpiredReason); empty if it never did. Subscriptions that expired before
-- this version keep an empty reason: it was not recorded.
ALTER TABLE subscriptions ADD COLUMN expired_reason TEXT NOT NULL DEFAULT '';
