-- Business rules and re-ranking (README "Business rules and re-ranking"). They run on
-- PostgreSQL and SQLite unless marked.

-- Rule sources may be tables in the recommendations database: name them in the settings
-- (rules.exclude_items = "withdrawn_items", rules.user_exclusions = "user_exclusions")
-- and refresh their rows before the nightly run: every publish reads them.
CREATE TABLE IF NOT EXISTS withdrawn_items (item_id VARCHAR(128) PRIMARY KEY);
CREATE TABLE IF NOT EXISTS user_exclusions (
    user_id VARCHAR(128) NOT NULL,
    item_id VARCHAR(128) NOT NULL,
    until   DATE          -- the pair applies while until >= the run date (NULL: for good)
);

-- Users whose published list is shorter than top_n (50): the catalogue left too few
-- unseen, allowed items, or too few categories under rerank.category_cap.
SELECT user_id, COUNT(*) AS items
FROM recommendations
GROUP BY user_id
HAVING COUNT(*) < 50
ORDER BY items, user_id;

-- Check: no excluded item in a live list (both should return no rows).
SELECT r.user_id, r.item_id FROM recommendations AS r JOIN withdrawn_items AS w ON w.item_id = r.item_id;
SELECT s.item_id, s.similar_item_id FROM similar_items AS s
JOIN withdrawn_items AS w ON w.item_id = s.similar_item_id;

-- NDCG of each candidate as published (after rules and re-ranking) and as the model
-- ranked it (raw_metrics is NULL when no rule or re-ranking is on). SQLite:
SELECT run_date, family, ndcg_at_k AS published_ndcg,
       json_extract(raw_metrics, '$.ndcg_at_k') AS raw_ndcg,
       diversity AS published_diversity, json_extract(raw_metrics, '$.diversity') AS raw_diversity
FROM model_runs
WHERE stage = 'candidate'
ORDER BY run_date, family;

-- The same on PostgreSQL:
-- SELECT run_date, family, ndcg_at_k AS published_ndcg,
--        CAST(raw_metrics AS json) ->> 'ndcg_at_k' AS raw_ndcg,
--        diversity AS published_diversity, CAST(raw_metrics AS json) ->> 'diversity' AS raw_diversity
-- FROM model_runs WHERE stage = 'candidate' ORDER BY run_date, family
