-- The gateway's schema (the pool's search_path points here).

-- Staff accounts for /api/auth/login (created with `andectl user add NAME`). argon2id hashes.
CREATE TABLE staff_users (
    username      text PRIMARY KEY,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Idempotency-Key of POST /api/customer/action: a retried request gets the same action id and
-- the same event id, so JetStream (within its duplicate window) and leads (forever) store it once.
CREATE TABLE idempotency_keys (
    scope        text NOT NULL,
    key          text NOT NULL,
    request_hash text NOT NULL,
    action_id    uuid NOT NULL,
    event_id     uuid NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
