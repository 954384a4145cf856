-- The staff console (issue 17).
--
-- Changes staff make to a lead (status, level, owner, remark) arrive as `lead.changed` events;
-- each applied event is one row here, which is the lead's audit trail and makes applying an
-- event idempotent under redelivery and replay (the event id is the key).
CREATE TABLE lead_changes (
    event_id   uuid PRIMARY KEY,
    lead_id    uuid NOT NULL REFERENCES leads (id),
    changed_by text NOT NULL,
    -- {"status": {"from": "待定", "to": "跟进中"}, …}: only the fields that changed.
    changes    jsonb NOT NULL,
    -- When staff made the change (the event's occurred_at); applied_at: when leads applied it.
    changed_at timestamptz NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX lead_changes_lead ON lead_changes (lead_id, changed_at);

-- The console's lead list pages by (created_at, id) or (last_touch_at, id), newest first,
-- optionally for one owner; these serve the sort and the cursor with an index scan.
CREATE INDEX leads_created ON leads (created_at DESC, id DESC);
CREATE INDEX leads_touched ON leads (last_touch_at DESC, id DESC);
CREATE INDEX leads_owner_touched ON leads (owner_advisor_id, last_touch_at DESC, id DESC);
