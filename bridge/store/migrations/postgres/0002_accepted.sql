-- The duplicate rule decided by the database: one row per accepted (sender, control ID),
-- inserted in the transaction that commits the message. A second instance committing the
-- same message at the same moment conflicts here and answers with the first one's ACK.
CREATE TABLE IF NOT EXISTS accepted (
    sender      TEXT NOT NULL,   -- MSH-3^MSH-4 as the journal keeps it ('' when none)
    control_id  TEXT NOT NULL,   -- MSH-10
    journal_id  BIGINT NOT NULL,
    PRIMARY KEY (sender, control_id)
);
INSERT INTO accepted (sender, control_id, journal_id)
SELECT COALESCE(sender, ''), control_id, MIN(id) FROM journal
WHERE control_id IS NOT NULL AND (status = 'processed' OR (status = 'replayed' AND ack_code = 'AA'))
GROUP BY COALESCE(sender, ''), control_id
ON CONFLICT DO NOTHING;
