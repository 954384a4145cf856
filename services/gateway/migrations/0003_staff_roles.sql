-- Roles for the staff console (issue 17): `admin` may do everything; `sales` works leads, and
-- when bound to an advisor id sees only the leads that advisor owns (and that advisor's
-- notifications). Accounts made before roles existed could do everything, so they stay admins.
ALTER TABLE staff_users
    ADD COLUMN role text NOT NULL DEFAULT 'admin' CHECK (role IN ('admin', 'sales')),
    ADD COLUMN advisor_id text;
