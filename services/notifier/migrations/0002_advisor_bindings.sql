-- Which WeChat users receive an advisor's notifications. A subscription (credits) only counts
-- for an (advisor, openid) that staff bound, directly or through a pairing code the advisor
-- redeemed from their own session: whoever posts a subscribe for someone else's advisor id
-- adds credits nobody will ever spend.
CREATE TABLE advisor_bindings (
    advisor_id  text NOT NULL,
    openid      text NOT NULL,
    bound_by    text NOT NULL,
    bound_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (advisor_id, openid)
);
CREATE INDEX advisor_bindings_openid ON advisor_bindings (openid);

-- One-time pairing codes. Only the SHA-256 of a code is kept: the code itself is shown once to
-- the staff member who made it.
CREATE TABLE advisor_pairings (
    code_sha256  bytea PRIMARY KEY,
    advisor_id   text NOT NULL,
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    redeemed_by  text,
    redeemed_at  timestamptz
);
