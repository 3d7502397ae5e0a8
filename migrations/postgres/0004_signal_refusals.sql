-- A trainer that cannot apply a signal says why; the signal is then answered, but not applied.
ALTER TABLE signals ADD COLUMN refused TEXT;
