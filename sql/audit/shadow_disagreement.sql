-- Grain: one row per (score_date, model_name, champion_version, shadow_version) with at least
-- one subscriber scored by both.
-- Keys: score_date, model_name, champion_version, shadow_version.
-- Inputs: predictions (view).
-- Only subscribers scored by both roles that day count: subscribers is that number,
-- tier_disagreements how many got another tier from the shadow, mean_abs_probability_diff the
-- mean |champion - shadow| probability, champion_high how many the champion put in tier high
-- and both_high how many of those the shadow put there too (high_overlap = both_high / champion_high).
WITH champion AS (
    SELECT score_date, model_name, model_version, subscriber_id, probability, risk_tier
    FROM predictions
    WHERE role = 'champion'
),
shadow AS (
    SELECT score_date, model_name, model_version, subscriber_id, probability, risk_tier
    FROM predictions
    WHERE role = 'shadow'
)
SELECT
    c.score_date,
    c.model_name,
    c.model_version AS champion_version,
    s.model_version AS shadow_version,
    COUNT(*) AS subscribers,
    COUNT(*) FILTER (WHERE c.risk_tier <> s.risk_tier) AS tier_disagreements,
    AVG(abs(c.probability - s.probability)) AS mean_abs_probability_diff,
    COUNT(*) FILTER (WHERE c.risk_tier = 'high') AS champion_high,
    COUNT(*) FILTER (WHERE c.risk_tier = 'high' AND s.risk_tier = 'high') AS both_high,
    COUNT(*) FILTER (WHERE c.risk_tier = 'high' AND s.risk_tier = 'high')
        / NULLIF(COUNT(*) FILTER (WHERE c.risk_tier = 'high'), 0) AS high_overlap
FROM champion AS c
JOIN shadow AS s
    ON c.score_date = s.score_date
    AND c.model_name = s.model_name
    AND c.subscriber_id = s.subscriber_id
GROUP BY c.score_date, c.model_name, c.model_version, s.model_version
