-- The duplicate check (previous_ack) and the journal search look entries up by sender (and
-- control ID). An entry gets its sender only when it is processed, failed or a duplicate;
-- while it is `received` (journaled, not yet parsed) it has none. Indexing only entries
-- with a sender leaves the journaling insert of every message out of this index: one
-- index change less per message, on the hot path (issue 13). Every query that filters on
-- `sender = ?` implies `sender IS NOT NULL`, so it still uses the index.
DROP INDEX IF EXISTS journal_control;
CREATE INDEX IF NOT EXISTS journal_control ON journal (sender, control_id)
    WHERE sender IS NOT NULL;
