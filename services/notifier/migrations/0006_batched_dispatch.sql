-- Batched dispatch (issue 12).
--
-- retrying_since: when the current run of transient failures (-1, 45011, 5xx, timeouts) began;
-- such failures are retried until NOTIFIER_RETRY_FOR has passed since then, however many
-- attempts that takes. Cleared by nothing: a notification that failed transiently, waited for a
-- credit and fails again keeps its first date (the budget is per notification, not per run).
--
-- crashes: attempts abandoned by a crashed or hung process (re-queued by the sweep). Failing a
-- notification after NOTIFIER_MAX_ATTEMPTS of these stops a message that kills its sender from
-- doing so forever; transient WeChat failures no longer count against it.
ALTER TABLE notifications ADD COLUMN retrying_since timestamptz;
ALTER TABLE notifications ADD COLUMN crashes integer NOT NULL DEFAULT 0;

-- The claim skips advisors with a send in flight (one advisor's messages go out in order).
CREATE INDEX notifications_sending_advisor ON notifications (advisor_id) WHERE state = 'sending';
-- Operators list notifications by state (andectl notifier ls) and the status shows the queue.
CREATE INDEX notifications_state ON notifications (state, updated_at);
