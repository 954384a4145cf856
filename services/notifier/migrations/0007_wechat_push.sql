-- WeChat's subscription pushes already applied. Their ids are derived from FromUserName +
-- CreateTime + the item's content (the gateway does it), so a push WeChat retries, or one
-- replayed from the stream, is applied once. Kept like the delivery log (ANDE_RETENTION_NOTIFICATIONS).
CREATE TABLE wechat_push_events (
    event_id     uuid PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('popup', 'change', 'sent')),
    openid       text NOT NULL,
    template_id  text NOT NULL,
    pushed_at    timestamptz NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX wechat_push_events_applied ON wechat_push_events (applied_at);

-- A subscribe_msg_sent_event names the message by WeChat's msgid.
CREATE INDEX notifications_msgid ON notifications (msgid) WHERE msgid IS NOT NULL;
