-- Grain: one row per (subscriber_id, score_date, model_name, model_version, role): a
-- subscriber's predictions over time, champion and shadow side by side.
-- Keys: subscriber_id, score_date, model_version, role (prediction_id).
-- Inputs: predictions (view).
-- features is the feature values the model saw, as a struct (see predictions.sql).
SELECT
    subscriber_id,
    score_date,
    model_name,
    model_version,
    role,
    probability,
    risk_tier,
    reasons,
    scored_at,
    features,
    feature_service,
    flow_run_id,
    prediction_id
FROM predictions
