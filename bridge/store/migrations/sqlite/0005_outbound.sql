-- Status messages to the RIS (bridge/outbound/): one row per order and MPPS event, queued
-- in the transaction that records the MPPS change. The message is built at the first
-- attempt and kept, so every retry sends the same bytes and control ID; a row the RIS
-- acknowledged (sent) is never sent again. On a shared database a sender claims a row
-- (claimed_until) before it sends it: each row is sent by one instance.
CREATE TABLE IF NOT EXISTS outbound (
    id            INTEGER PRIMARY KEY,
    destination   TEXT NOT NULL,
    order_key     TEXT NOT NULL,
    item_keys     TEXT NOT NULL,      -- JSON list: the order's items the MPPS performs
    event         TEXT NOT NULL,      -- in_progress | completed | discontinued
    mpps_uid      TEXT NOT NULL,
    mpps          TEXT NOT NULL,      -- DICOM JSON of the instance at that event
    created_at    REAL NOT NULL,
    state         TEXT NOT NULL DEFAULT 'pending',  -- pending | sent | dead
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_at       REAL NOT NULL DEFAULT 0,
    claimed_until REAL NOT NULL DEFAULT 0,  -- a sender is on it until then
    message       BLOB,               -- the bytes sent (built at the first attempt)
    control_id    TEXT,
    ack_code      TEXT,
    error         TEXT,
    sent_at       REAL
);
CREATE INDEX IF NOT EXISTS outbound_due ON outbound (destination, state, id);
CREATE INDEX IF NOT EXISTS outbound_order ON outbound (destination, order_key, state, id);
