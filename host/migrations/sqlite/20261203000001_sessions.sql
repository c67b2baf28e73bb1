-- Web UI sign-in. A browser's `kiln_session` cookie holds a random token;
-- only its SHA-256 (hex) is stored. `subject` is the user's id at the
-- provider, `name` their login, `organisations` a JSON array of names
-- and `admin` (BIGINT 0/1) whether the login was in `[serve] admins` at
-- sign-in. `csrf` is the token every control form of the session carries.
-- A sign-in in progress keeps its OAuth `state` (hashed) and PKCE
-- verifier in `login_attempts` for a few minutes.
-- Kept in step with ../postgres/ (only the id type differs).

CREATE TABLE sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    provider TEXT NOT NULL,
    name TEXT NOT NULL,
    admin BIGINT NOT NULL DEFAULT 0,
    organisations TEXT NOT NULL DEFAULT '[]',
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);

CREATE TABLE login_attempts (
    state_hash TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    verifier TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
