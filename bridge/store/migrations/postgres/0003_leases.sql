-- Work that several instances share is claimed with leases that expire when the holder
-- dies: an outbox row of a shared sink (Orthanc) is delivered by the instance holding it,
-- housekeeping runs where the 'housekeeping' lease is held. On one machine (SQLite) they
-- are held by the only instance.
ALTER TABLE outbox ADD COLUMN lease_until DOUBLE PRECISION;
ALTER TABLE outbox ADD COLUMN leased_by TEXT;
CREATE TABLE IF NOT EXISTS leases (
    name        TEXT PRIMARY KEY,   -- what is held: 'housekeeping'
    holder      TEXT NOT NULL,      -- the instance
    until       DOUBLE PRECISION NOT NULL
);
