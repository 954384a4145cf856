-- Staff tokens name the account's token version; changing the password or disabling the account
-- moves the version on, so every token issued before stops working at once.
ALTER TABLE staff_users
    ADD COLUMN token_version integer NOT NULL DEFAULT 1,
    ADD COLUMN disabled boolean NOT NULL DEFAULT false;
