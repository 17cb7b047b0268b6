-- The schema as it stood when migrations got numbers. IF NOT EXISTS: a store made before
-- (without schema_version) takes this step without change, then the legacy columns are added.
CREATE TABLE IF NOT EXISTS journal (
    id           INTEGER PRIMARY KEY,
    received_at  REAL NOT NULL,
    peer         TEXT NOT NULL,
    raw          BLOB NOT NULL,
    sender       TEXT,
    control_id   TEXT,
    message_type TEXT,
    profile      TEXT,
    -- received | processed | failed | duplicate | replayed (failed, then replayed with
    -- success) | interrupted (the bridge stopped before answering it)
    status       TEXT NOT NULL DEFAULT 'received',
    ack_code     TEXT,
    ack          BLOB,
    error        TEXT,
    replay_count INTEGER NOT NULL DEFAULT 0,
    replayed_at  REAL
);
CREATE INDEX IF NOT EXISTS journal_control ON journal (sender, control_id);
CREATE INDEX IF NOT EXISTS journal_status ON journal (status);

CREATE TABLE IF NOT EXISTS items (
    item_key    TEXT PRIMARY KEY,
    order_key   TEXT NOT NULL,
    status      TEXT NOT NULL,
    visible     INTEGER NOT NULL,
    dataset     TEXT NOT NULL,       -- JSON: DICOM keyword -> value, sequences as lists
    patient_id  TEXT NOT NULL DEFAULT '',
    sps_start   TEXT NOT NULL DEFAULT '',  -- YYYYMMDDHHMMSS of the first step, for expiry
    updated_at  REAL NOT NULL,
    journal_id  INTEGER,
    final       INTEGER NOT NULL DEFAULT 0  -- the status sticks (lifecycle.py)
);
CREATE INDEX IF NOT EXISTS items_order ON items (order_key);
CREATE INDEX IF NOT EXISTS items_patient ON items (patient_id);
CREATE INDEX IF NOT EXISTS items_updated ON items (updated_at);
CREATE INDEX IF NOT EXISTS items_start ON items (visible, sps_start);

CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY,
    sink        TEXT NOT NULL,
    item_key    TEXT NOT NULL,
    created_at  REAL NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     REAL NOT NULL DEFAULT 0,
    state       TEXT NOT NULL DEFAULT 'pending',  -- pending | done | dead
    last_error  TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (sink, state, id);

CREATE TABLE IF NOT EXISTS order_ids (
    kind        TEXT NOT NULL,   -- the key rule's field (ORC-2, ORC-3...) or 'accession'
    value       TEXT NOT NULL,   -- key text (keys.py)
    order_key   TEXT NOT NULL,
    PRIMARY KEY (kind, value, order_key)
);
CREATE INDEX IF NOT EXISTS order_ids_order ON order_ids (order_key);

CREATE TABLE IF NOT EXISTS mpps (
    uid         TEXT PRIMARY KEY,  -- SOP Instance UID
    state       TEXT NOT NULL,     -- IN PROGRESS | COMPLETED | DISCONTINUED
    calling_ae  TEXT NOT NULL,
    attributes  TEXT NOT NULL,     -- DICOM JSON: N-CREATE's attributes, N-SETs applied
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS mpps_items (
    uid         TEXT NOT NULL,
    item_key    TEXT NOT NULL,
    PRIMARY KEY (uid, item_key)
);
CREATE INDEX IF NOT EXISTS mpps_items_item ON mpps_items (item_key);

CREATE TABLE IF NOT EXISTS sink_state (
    sink        TEXT NOT NULL,
    item_key    TEXT NOT NULL,
    remote_id   TEXT NOT NULL,
    delivered   INTEGER NOT NULL DEFAULT 0,  -- the sink holds our last put (1) or nothing (0)
    removed_at  REAL,                        -- the sink removed the item by itself, then
    PRIMARY KEY (sink, item_key)
);

