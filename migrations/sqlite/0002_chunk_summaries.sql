-- Each chunk's min, max, last and counts (64 bytes, see server/src/store/chunk.rs), so a
-- zoomed-out chart folds ~1,000 summaries instead of decoding a million points. Rows written
-- before this migration have none; readers summarise their points instead.
ALTER TABLE series_chunks ADD COLUMN summary BLOB;
