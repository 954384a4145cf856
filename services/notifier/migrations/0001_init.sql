-- The notifier's schema (the pool's search_path points here).

-- One-time subscription credits: WeChat gives no API to read them, so we count. Each accept
-- adds one; a send consumes one only when WeChat accepted it; 43101 sets the count to zero.
CREATE TABLE subscriptions (
    advisor_id   text NOT NULL,
    openid       text NOT NULL,
    template_id  text NOT NULL,
    credits      integer NOT NULL DEFAULT 0 CHECK (credits >= 0),
    long_term    boolean NOT NULL DEFAULT false,
    last_status  text NOT NULL,
    accepts      integer NOT NULL DEFAULT 0,
    rejects      integer NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (advisor_id, openid, template_id)
);

-- Subscription events already applied (a redelivered accept must not add a second credit).
CREATE TABLE subscription_events (
    event_id     uuid PRIMARY KEY,
    advisor_id   text NOT NULL,
    openid       text NOT NULL,
    template_id  text NOT NULL,
    status       text NOT NULL,
    source       text,
    occurred_at  timestamptz NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per message we mean to send: one per (action, advisor), or a digest, or a direct send.
-- The row is the work queue: workers claim due rows with FOR UPDATE SKIP LOCKED.
CREATE TABLE notifications (
    id              uuid PRIMARY KEY,
    action_id       uuid NOT NULL,
    advisor_id      text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('action', 'digest')),
    state           text NOT NULL CHECK (state IN ('queued', 'sending', 'sent', 'failed', 'waiting_credit', 'digested', 'dropped')),
    template_id     text NOT NULL,
    data            jsonb NOT NULL,
    page            text,
    summary         jsonb NOT NULL DEFAULT '{}',
    openid          text,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_at      timestamptz,
    msgid           text,
    errcode         bigint,
    errmsg          text,
    digest_id       uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (action_id, advisor_id)
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE state = 'queued';
CREATE INDEX notifications_waiting ON notifications (advisor_id) WHERE state = 'waiting_credit';
CREATE INDEX notifications_sending ON notifications (claimed_at) WHERE state = 'sending';
CREATE INDEX notifications_digest ON notifications (digest_id);

-- Every decision and attempt, for the journey view and for operators.
CREATE TABLE deliveries (
    id              bigserial PRIMARY KEY,
    notification_id uuid,
    action_id       uuid,
    advisor_id      text,
    event           text NOT NULL,
    errcode         bigint,
    errmsg          text,
    msgid           text,
    detail          text,
    at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deliveries_action ON deliveries (action_id);

-- Global switches. key 'sending': paused_until set on 45009 (daily quota) or by an operator.
CREATE TABLE control (
    key           text PRIMARY KEY,
    paused_until  timestamptz,
    reason        text,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
