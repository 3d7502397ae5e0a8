-- Each chunk's min, max, last and counts (64 bytes, see server/src/store/chunk.rs), so a
-- zoomed-out chart folds ~1,000 summaries instead of decoding a million points. Rows written
-- before this migration have none; readers summarise their points instead.
--
-- SQLite stores a row's columns in order and a 16 KB `data` blob spills into overflow pages, so
-- a column after `data` costs a walk of that chain: the table is rebuilt with `summary` first.
CREATE TABLE series_chunks_v2 (
    run_pk    INTEGER NOT NULL REFERENCES runs (pk) ON DELETE CASCADE,
    metric_id INTEGER NOT NULL REFERENCES metric_names (id),
    chunk     INTEGER NOT NULL,
    points    INTEGER NOT NULL,
    summary   BLOB,
    data      BLOB    NOT NULL,
    PRIMARY KEY (run_pk, metric_id, chunk)
) WITHOUT ROWID;
INSERT INTO series_chunks_v2 (run_pk, metric_id, chunk, points, data)
    SELECT run_pk, metric_id, chunk, points, data FROM series_chunks;
DROP TABLE series_chunks;
ALTER TABLE series_chunks_v2 RENAME TO series_chunks;
