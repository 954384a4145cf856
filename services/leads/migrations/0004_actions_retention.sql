-- Retention deletes actions by age (ANDE_RETENTION_ACTIONS).
CREATE INDEX actions_occurred ON actions (occurred_at);
