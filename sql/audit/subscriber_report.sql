-- Grain: one row per (score_date, model_version, role) for one subscriber, oldest first.
-- Keys: score_date, role, model_version.
-- Inputs: subscriber_predictions (view); $subscriber_id.
-- features stays a struct for callers; `churn audit subscriber --format csv` prints it as JSON.
SELECT *
FROM subscriber_predictions
WHERE subscriber_id = $subscriber_id
ORDER BY score_date, role, model_version
