-- Cold start: what to show a user, whatever recjobs knows about them. Runs unchanged on
-- PostgreSQL and SQLite (see README "Cold start").
--
-- segment_popular_items (filled when coldstart.segment_prefix is set, e.g. "occupation=")
--   segment   text     a user feature, e.g. occupation=writer
--   rank      integer  1 = most popular within the segment
--   item_id   text
--   score     float    how many of the segment's users interacted with the item
--   run_date  text     the date it was computed for
-- user_segments: user_id, segment (every user with a feature of that prefix, with or
--   without interactions: a new user whose features were ingested has a segment)
-- popular_items: rank, item_id, score (users per item), run_date: the global list

-- A user's list: personal if the model ranked them, else their segment's popular items,
-- else the global popular items. `source` says which one was served.
SELECT item_id, score, 'personal' AS source, rank
FROM recommendations
WHERE user_id = :user_id
UNION ALL
SELECT s.item_id, s.score, 'segment' AS source, s.rank
FROM segment_popular_items AS s
JOIN user_segments AS u ON u.segment = s.segment
WHERE u.user_id = :user_id
  AND NOT EXISTS (SELECT 1 FROM recommendations WHERE user_id = :user_id)
UNION ALL
SELECT item_id, score, 'popular' AS source, rank
FROM popular_items
WHERE NOT EXISTS (SELECT 1 FROM recommendations WHERE user_id = :user_id)
  AND NOT EXISTS (SELECT 1 FROM segment_popular_items AS s
                  JOIN user_segments AS u ON u.segment = s.segment
                  WHERE u.user_id = :user_id)
ORDER BY rank
LIMIT 10;
