-- A customer's earlier actions that carried their session (openid) but no phone, joined to the
-- lead when a later action of that openid brought the phone and the lead is that openid's
-- (leads.openid): linked_lead_id is the lead, linked_by the action that linked them. The
-- linking action counts what it linked (its outcome event carries the list).
ALTER TABLE actions
    ADD COLUMN linked_lead_id uuid REFERENCES leads (id),
    ADD COLUMN linked_by uuid,
    ADD COLUMN linked_advisors integer NOT NULL DEFAULT 0;
CREATE INDEX actions_openid_unlinked ON actions (openid, occurred_at)
    WHERE lead_id IS NULL AND linked_lead_id IS NULL AND openid IS NOT NULL;
CREATE INDEX actions_linked_by ON actions (linked_by) WHERE linked_by IS NOT NULL;
CREATE INDEX actions_linked_lead ON actions (linked_lead_id) WHERE linked_lead_id IS NOT NULL;
