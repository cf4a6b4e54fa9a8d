-- Who set the pause: 'operator' (marketo-sync pause) or 'quota' (Marketo's daily quota ran out,
-- until the Marketo day turns). A quota pause never replaces an operator's pause in force.
ALTER TABLE control_pause ADD COLUMN kind TEXT NOT NULL DEFAULT 'operator';
