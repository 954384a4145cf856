-- The journey reads an action's delivery log by notification id too (a digest's log is filed
-- under the digest); retention deletes by age.
CREATE INDEX deliveries_notification ON deliveries (notification_id);
CREATE INDEX deliveries_at ON deliveries (at);
CREATE INDEX notifications_created ON notifications (created_at);
