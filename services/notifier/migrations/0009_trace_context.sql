-- The W3C trace context of the consume that queued a notification: the send, which runs later
-- in a worker, continues that trace (so one customer action is one trace, WeChat call included).
ALTER TABLE notifications ADD COLUMN traceparent text;
