-- For the HTTP server (bridge/web/): users, item history.
-- Item history is written by triggers, so every path that writes items (messages, MPPS,
-- operators, expiry, other processes) records it without a change to that path. The
-- journal entry is recorded when a message made the change: the entry is still being
-- processed then (received, or failed/interrupted on a replay in place).
CREATE TABLE IF NOT EXISTS users (
    name          TEXT PRIMARY KEY,
    role          TEXT NOT NULL,      -- viewer | operator | admin
    password_hash TEXT NOT NULL,      -- argon2id (users.py)
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS item_history (
    id          INTEGER PRIMARY KEY,
    item_key    TEXT NOT NULL,
    at          REAL NOT NULL,
    status      TEXT NOT NULL,
    visible     INTEGER NOT NULL,
    journal_id  INTEGER               -- the message that made the change; NULL: none
);
CREATE INDEX IF NOT EXISTS item_history_key ON item_history (item_key, id);
CREATE INDEX IF NOT EXISTS item_history_journal ON item_history (journal_id);
CREATE TRIGGER IF NOT EXISTS items_history_insert AFTER INSERT ON items BEGIN
    INSERT INTO item_history (item_key, at, status, visible, journal_id)
    VALUES (NEW.item_key, NEW.updated_at, NEW.status, NEW.visible,
            (SELECT id FROM journal WHERE id = NEW.journal_id
             AND status IN ('received', 'failed', 'interrupted')));
END;
CREATE TRIGGER IF NOT EXISTS items_history_update AFTER UPDATE ON items BEGIN
    INSERT INTO item_history (item_key, at, status, visible, journal_id)
    VALUES (NEW.item_key, NEW.updated_at, NEW.status, NEW.visible,
            (SELECT id FROM journal WHERE id = NEW.journal_id
             AND status IN ('received', 'failed', 'interrupted')));
END;
