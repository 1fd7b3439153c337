-- Grain: one row per (score_date, model_name, model_version, role, risk_tier).
-- Keys: score_date, model_name, model_version, role, risk_tier.
-- Inputs: predictions (view).
-- share is the tier's part of that file's predictions.
SELECT
    score_date,
    model_name,
    model_version,
    role,
    risk_tier,
    COUNT(*) AS predictions,
    COUNT(*) / SUM(COUNT(*)) OVER (
        PARTITION BY score_date, model_name, model_version, role
    ) AS share,
    AVG(probability) AS mean_probability
FROM predictions
GROUP BY score_date, model_name, model_version, role, risk_tier
