-- A run's jobs by status, in evaluation order: the API's failed-job list
-- and the metrics' queue depth read this instead of every job of the run.
CREATE INDEX jobs_by_run_status ON jobs (run_id, status, idx);
