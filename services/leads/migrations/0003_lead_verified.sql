-- Whether a verified action (one with a mini-program session) has touched the lead. Anonymous
-- actions may create a lead but never change its name, openid or owner; the first verified
-- action corrects what anonymous ones said (a rival cannot pre-claim a phone number). Leads from
-- before this column were made under the old rules and count as verified.
ALTER TABLE leads ADD COLUMN verified boolean NOT NULL DEFAULT true;
