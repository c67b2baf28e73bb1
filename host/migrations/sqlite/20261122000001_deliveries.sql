-- Webhook deliveries as received, and the change events parsed from them.
-- Kept in step with ../postgres/ (only the id and BLOB types differ).

CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The `[forges.<instance>]` it arrived for.
    forge TEXT NOT NULL,
    -- The forge's delivery id, or `sha256:<body hash>` when it sends none.
    delivery TEXT NOT NULL,
    -- Unix time in milliseconds.
    received_at BIGINT NOT NULL,
    -- The request's headers as a JSON array of [name, value] pairs.
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('received', 'processed', 'ignored', 'failed')),
    -- Why it failed, or the plugin's note when ignored.
    error TEXT,
    -- When a plugin asked to be called again (Unix ms); NULL otherwise.
    retry_at BIGINT,
    UNIQUE (forge, delivery)
);

CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id BIGINT NOT NULL REFERENCES deliveries (id),
    -- `push` or `pull_request`.
    kind TEXT NOT NULL,
    -- The repository's full name (`owner/repo`).
    project TEXT NOT NULL,
    -- The full ref of a push (`refs/heads/main`); NULL for a pull request.
    git_ref TEXT,
    -- The branch pushed to, or the pull request's head branch.
    branch TEXT,
    -- The revision to build: the push's new head or the pull request's head.
    rev TEXT NOT NULL,
    pull_request BIGINT,
    -- The whole event as JSON.
    payload TEXT NOT NULL
);

CREATE INDEX events_by_delivery ON events (delivery_id);
CREATE INDEX deliveries_by_status ON deliveries (status);
