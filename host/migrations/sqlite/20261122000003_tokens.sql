-- API tokens for `/api/v1` control actions, made by `kiln token create`.
-- Only the SHA-256 (hex) of a token is stored; the token itself is printed
-- once. `admin` is a BIGINT 0/1 and `organisations` a JSON array of names,
-- as the authz plugin's subject carries them. A revoked token keeps its row
-- (who had it, when it was last used) but is refused.
-- Kept in step with ../postgres/ (only the id type differs).

CREATE TABLE api_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL,
    admin BIGINT NOT NULL DEFAULT 0,
    organisations TEXT NOT NULL DEFAULT '[]',
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX api_tokens_by_subject ON api_tokens (subject);

-- The API lists a run's jobs in evaluation order.
CREATE INDEX api_jobs_in_order ON jobs (run_id, idx);
