-- Direct sends (staff, POST /api/message/send) made with an Idempotency-Key: the first attempt
-- claims the key before calling WeChat and stores WeChat's answer after, so a retry with the
-- same key gets that answer instead of a second message. A claim whose outcome never became
-- known (WeChat timed out, the notifier stopped mid-send) stays `unknown`: a retry is told so
-- rather than sending blind. Kept 7 days, like the gateway's keys.
CREATE TABLE direct_send_keys (
    scope        text NOT NULL,
    key          text NOT NULL,
    fingerprint  text NOT NULL,
    state        text NOT NULL CHECK (state IN ('sending', 'answered', 'unknown')),
    errcode      bigint,
    errmsg       text,
    msgid        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    answered_at  timestamptz,
    PRIMARY KEY (scope, key)
);
