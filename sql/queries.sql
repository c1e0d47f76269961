-- Example queries for apps. They run unchanged on PostgreSQL and SQLite.
--
-- recommendations (a view over the live version, see README "Reading recommendations")
--   user_id        text     the user, as in the ingested ratings
--   item_id        text     a recommended item the user has not interacted with
--   rank           integer  1 = best
--   score          float    model score, comparable within one user's list and one model_version
--   model_version  text     e.g. lightfm-20260131-full-1a2b3c4d (family, logical date, hash)
--   generated_at   timestamp with time zone of the publish
--   predicted_rating float  the rating the model predicts the user would give the item, where
--                           the champion predicts explicit ratings (the ranker), else NULL
-- similar_items (same guarantees): item_id, similar_item_id, rank, score, model_version, generated_at
-- item_segments (same guarantees): item_id, user_id, rank, score, model_version, generated_at
--   the users most likely to want each item, seen items left out (empty unless item_segments.top_users is set)
-- popular_items: rank, item_id, score (interaction count), run_date: fallback for unknown users
--   (per segment of users: segment_popular_items and user_segments, fallback query in coldstart.sql)
-- recommendations_history: run_date, user_id, item_id, rank, score, model_version, predicted_rating
--   (every published date)
-- model_runs: one row per (run_date, family, stage) with metrics, params, timings and gate reasons

-- One user's top 10.
SELECT item_id, score
FROM recommendations
WHERE user_id = :user_id
ORDER BY rank
LIMIT 10;

-- A user's list, or the popular items for a user the model has never seen.
SELECT item_id, score, 'personal' AS source, rank
FROM recommendations
WHERE user_id = :user_id
UNION ALL
SELECT item_id, score, 'popular' AS source, rank
FROM popular_items
WHERE NOT EXISTS (SELECT 1 FROM recommendations WHERE user_id = :user_id)
ORDER BY rank
LIMIT 10;

-- "More like this" for an item page, with titles where item metadata was ingested.
SELECT s.similar_item_id, i.title, s.score
FROM similar_items AS s
LEFT JOIN items AS i ON i.item_id = s.similar_item_id
WHERE s.item_id = :item_id
ORDER BY s.rank
LIMIT 10;

-- What a user was recommended on a past date.
SELECT item_id, rank, score, model_version
FROM recommendations_history
WHERE user_id = :user_id AND run_date = :run_date
ORDER BY rank;

-- Which model is live, and since when.
SELECT model_version, run_date, published_at
FROM publications
WHERE kind = 'recommendations' AND is_live;

-- Every family's NDCG@10 by date, and each gate decision.
SELECT run_date, family, ndcg_at_k, status, reason
FROM model_runs
WHERE stage IN ('candidate', 'gate')
ORDER BY run_date, stage, family;

-- A campaign's audience: the users most likely to want an item who have not interacted with it.
SELECT user_id, score
FROM item_segments
WHERE item_id = :item_id
ORDER BY rank
LIMIT 100;

-- One user's list with the stars to show beside each item (NULL when the model predicts none).
SELECT item_id, rank, predicted_rating
FROM recommendations
WHERE user_id = :user_id
ORDER BY rank;
