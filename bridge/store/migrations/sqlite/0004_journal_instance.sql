-- Which instance received a message: at start-up an instance marks only its own unanswered
-- messages `interrupted`, not those another instance is processing right now.
ALTER TABLE journal ADD COLUMN instance TEXT NOT NULL DEFAULT '';
