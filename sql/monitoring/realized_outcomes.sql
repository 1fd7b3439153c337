-- Grain: one row per logged prediction of one score date and model:
-- (model_version, role, subscriber_id).
-- Keys: model_version, role, subscriber_id.
-- Inputs: $files (that score date's prediction-log files), $score_date, $model_name;
-- realized_labels (temp table of realized_labels.sql for that score date).
-- churned_30d is null for a logged subscriber the source tables do not show in service that day
-- (a log and sources that disagree): such rows are counted, never given a label. Ordered by
-- subscriber_id within each model, so ties in the top K break the same way on every run.
SELECT
    p.model_version,
    p.role,
    p.subscriber_id,
    p.probability,
    l.churned_30d
FROM read_parquet($files, hive_partitioning = false, union_by_name = true) AS p
LEFT JOIN realized_labels AS l
    ON l.subscriber_id = p.subscriber_id AND l.score_date = p.score_date
WHERE p.score_date = $score_date AND p.model_name = $model_name
ORDER BY p.model_version, p.role, p.subscriber_id
