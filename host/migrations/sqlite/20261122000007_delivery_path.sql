-- The request path below /webhooks/<instance>, so that a delivery kept
-- for a retry is handed to its plugin again exactly as it arrived (Gerrit
-- authenticates with a token in the path).
ALTER TABLE deliveries ADD COLUMN path TEXT NOT NULL DEFAULT '/';
