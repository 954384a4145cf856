-- What staff may set per advisor (POST /api/advisor-settings). quiet_hours: 'HH:MM-HH:MM'
-- (Beijing time), 'off' (none, whatever the deployment's), or NULL (the deployment's
-- NOTIFIER_QUIET_HOURS).
CREATE TABLE advisor_settings (
    advisor_id   text PRIMARY KEY,
    quiet_hours  text CHECK (quiet_hours IS NULL OR quiet_hours = 'off'
                             OR quiet_hours ~ '^[0-2][0-9]:[0-5][0-9]-[0-2][0-9]:[0-5][0-9]$'),
    updated_by   text NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- NOTIFIER_MAX_SINGLES_PER_HOUR counts an advisor's single messages claimed in the last hour.
CREATE INDEX notifications_singles ON notifications (advisor_id, claimed_at)
    WHERE kind = 'action' AND state IN ('sending', 'sent');
