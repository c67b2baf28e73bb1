-- The pipeline's state: projects, runs (one per project and evaluated tree),
-- the targets each run reports to (a branch head or a pull request's head
-- commit), jobs, and the forge statuses owed (an outbox: `version` is bumped
-- on each change, `posted_version` once the forge has it).
-- Kept in step with ../postgres/ (only the id types differ). Booleans are
-- BIGINT 0/1 so that one query text serves both backends.

-- `new` until the pipeline has turned the event into a run target (or
-- decided to skip it: `ignored`, with the reason in `note`).
ALTER TABLE events ADD COLUMN state TEXT NOT NULL DEFAULT 'new'
    CHECK (state IN ('new', 'started', 'ignored'));
ALTER TABLE events ADD COLUMN note TEXT;
CREATE INDEX events_by_state ON events (state);

CREATE TABLE projects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The `[forges.<instance>]` it belongs to.
    forge TEXT NOT NULL,
    -- The repository's full name (`owner/repo`, or the Gerrit project).
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    clone_url TEXT NOT NULL,
    web_url TEXT,
    default_branch TEXT NOT NULL,
    private BIGINT NOT NULL DEFAULT 0,
    -- The repository record as the forge plugin gave it (JSON).
    repository TEXT NOT NULL,
    -- `configured` (kiln.toml), `discovered` (the forge's topic) or `webhook`.
    source TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (forge, name)
);

CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id BIGINT NOT NULL REFERENCES projects (id),
    -- The git tree evaluated: the key that lets a push and a pull request
    -- with the same content share one run.
    tree TEXT NOT NULL,
    -- The commit evaluated (a pull request's local merge commit).
    rev TEXT NOT NULL,
    -- What first asked for it, for display and for the change options.
    branch TEXT,
    pull_request BIGINT,
    -- The head commit's message, for `[skip ci]` and display.
    message TEXT,
    state TEXT NOT NULL
        CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'error')),
    -- Secret-using post-build steps may run (not a fork or untrusted
    -- author's pull request, or approved).
    trusted BIGINT NOT NULL DEFAULT 1,
    -- Held: built without secrets until someone approves it.
    needs_approval BIGINT NOT NULL DEFAULT 0,
    approved_by TEXT,
    -- Run the post-build steps on cached jobs too (a resumed, approved or
    -- rebuilt run whose steps may not have finished).
    rerun_steps BIGINT NOT NULL DEFAULT 0,
    -- Why it ended in `error` or `cancelled`.
    error TEXT,
    -- How many times it was started (a restart re-runs it).
    attempts BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    evaluated_at BIGINT,
    finished_at BIGINT,
    -- The report's summary counts (JSON), once final.
    summary TEXT
);
CREATE INDEX runs_by_key ON runs (project_id, tree);
CREATE INDEX runs_by_state ON runs (state);

CREATE TABLE targets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id BIGINT NOT NULL REFERENCES runs (id),
    project_id BIGINT NOT NULL REFERENCES projects (id),
    -- The event that asked for it; NULL when reconciliation found it.
    event_id BIGINT REFERENCES events (id),
    -- `push` or `pull_request`.
    kind TEXT NOT NULL,
    branch TEXT,
    pull_request BIGINT,
    -- The commit statuses go on: the pushed head, or the pull request's
    -- head commit (never the local merge commit).
    rev TEXT NOT NULL,
    -- `superseded` once a newer commit arrived on the same branch or pull
    -- request: nothing more is posted for it.
    state TEXT NOT NULL CHECK (state IN ('active', 'superseded')),
    created_at BIGINT NOT NULL
);
CREATE INDEX targets_by_run ON targets (run_id);
CREATE INDEX targets_by_line ON targets (project_id, kind, branch, pull_request);

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id BIGINT NOT NULL REFERENCES runs (id),
    -- Position in evaluation order within the run.
    idx BIGINT NOT NULL,
    attr TEXT NOT NULL,
    system TEXT NOT NULL,
    drv_path TEXT,
    -- The report's job status (`queued`, `running`, `succeeded`, …).
    status TEXT NOT NULL,
    error TEXT,
    failed_dependency TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    duration_ms BIGINT NOT NULL DEFAULT 0,
    started_at BIGINT,
    finished_at BIGINT,
    log_path TEXT,
    -- Post-build results (JSON array), once they ran.
    post_build TEXT,
    -- Outputs (JSON object name → store path).
    outputs TEXT NOT NULL DEFAULT '{}',
    UNIQUE (run_id, attr)
);

CREATE TABLE statuses (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target_id BIGINT NOT NULL REFERENCES targets (id),
    context TEXT NOT NULL,
    state TEXT NOT NULL,
    description TEXT NOT NULL,
    target_url TEXT,
    summary TEXT,
    -- Failed attributes with links (JSON array of {attr, url}).
    failures TEXT NOT NULL DEFAULT '[]',
    version BIGINT NOT NULL,
    posted_version BIGINT NOT NULL DEFAULT 0,
    attempts BIGINT NOT NULL DEFAULT 0,
    -- Not before (Unix ms): the forge asked to wait.
    next_attempt_at BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    UNIQUE (target_id, context)
);
CREATE INDEX statuses_owed ON statuses (next_attempt_at) WHERE posted_version < version;
