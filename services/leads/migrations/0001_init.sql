-- The leads service's schema (the pool's search_path points here).

-- Customer leads of the CRM, unique by normalised mainland mobile.
CREATE SEQUENCE customer_code_seq;

CREATE TABLE leads (
    id               uuid PRIMARY KEY,
    customer_code    text NOT NULL UNIQUE,
    phone            text NOT NULL UNIQUE,
    name             text,
    openid           text,
    owner_advisor_id text NOT NULL,
    created_by       text NOT NULL,
    source           text NOT NULL,
    status           text NOT NULL,
    level            text NOT NULL,
    remark           text NOT NULL,
    touch_count      integer NOT NULL DEFAULT 1,
    last_touch_at    timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX leads_owner_created ON leads (owner_advisor_id, created_at);

-- Every recorded customer action, with what it meant for the CRM. The outcome event is
-- re-emitted from here (same event id) until `outcome_published_at` is set: the row is its own
-- outbox.
CREATE TABLE actions (
    action_id         uuid PRIMARY KEY,
    event_id          uuid NOT NULL,
    stream_seq        bigint,
    customer_id       text NOT NULL,
    advisor_id        text NOT NULL,
    action_type       text NOT NULL,
    action_data       jsonb NOT NULL,
    extra             jsonb NOT NULL DEFAULT '{}',
    customer_name     text,
    customer_phone    text,
    phone_normalized  text,
    openid            text,
    client_ip         text,
    user_agent        text,
    occurred_at       timestamptz NOT NULL,
    stored_at         timestamptz NOT NULL DEFAULT now(),
    outcome_kind      text NOT NULL CHECK (outcome_kind IN ('created', 'matched', 'none')),
    no_lead_reason    text,
    lead_id           uuid REFERENCES leads (id),
    is_new_customer   boolean NOT NULL,
    outcome_event_id  uuid NOT NULL,
    outcome_published_at timestamptz
);
CREATE INDEX actions_advisor_time ON actions (advisor_id, occurred_at);
CREATE INDEX actions_lead ON actions (lead_id);
CREATE INDEX actions_unpublished ON actions (stored_at) WHERE outcome_published_at IS NULL;
