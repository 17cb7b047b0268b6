-- Each write of an item counts up its version: an SCP index fed by several paths (its own
-- commits, other instances' notifications, a catch-up read) never puts an older state of
-- an item over a newer one. updated_at cannot say so: it is the writing instance's clock.
ALTER TABLE items ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
