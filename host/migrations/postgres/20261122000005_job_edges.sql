-- The job graph of a run: job `attr` depends on job `depends_on` (the
-- nearest jobs below it in the derivation graph), by attribute, since a
-- job's position in evaluation order may change when its run runs again.
CREATE TABLE job_edges (
    run_id BIGINT NOT NULL REFERENCES runs (id),
    attr TEXT NOT NULL,
    depends_on TEXT NOT NULL,
    PRIMARY KEY (run_id, attr, depends_on)
);
