-- Only notifications folded into a digest have a digest_id; every lookup by it names one. The
-- full index took an entry for each of the three row versions every notification writes
-- (queued, sending, sent), all NULL and never read (issue 14: the notifier's updates are
-- non-HOT, so each version enters every index whose predicate it meets).
DROP INDEX notifications_digest;
CREATE INDEX notifications_digest ON notifications (digest_id) WHERE digest_id IS NOT NULL;
