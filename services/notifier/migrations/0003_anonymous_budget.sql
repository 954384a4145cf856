-- Notifications of anonymous actions (no mini-program session: anyone could have sent them).
-- Each advisor's anonymous notifications may spend at most NOTIFIER_ANONYMOUS_PER_HOUR sends an
-- hour; above that they wait and go out folded into the next digest, and they never count
-- against the room (`NOTIFIER_MAX_WAITING`) of verified customers' notifications.
ALTER TABLE notifications ADD COLUMN anonymous boolean NOT NULL DEFAULT false;
CREATE INDEX notifications_anonymous_recent ON notifications (advisor_id, created_at) WHERE anonymous;
