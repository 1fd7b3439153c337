-- Grain: one row per (score_date, model_name) present in the prediction log.
-- Keys: score_date, model_name.
-- Inputs: predictions, promotions (views); getvariable('business_timezone') (settings.timezone:
-- a score date ends at midnight there).
-- champion_version is the target of the latest move of the champion alias at or before the end
-- of the score date (null: no champion yet, or the alias was taken off); logged_champion_versions
-- are the versions the log holds as champion that day, so log_agrees flags a night scored by
-- another version than the history says.
WITH days AS (
    SELECT
        score_date,
        model_name,
        timezone(
            getvariable('business_timezone'), CAST(score_date + INTERVAL 1 DAY AS TIMESTAMP)
        ) AS day_end,
        list_sort(list(DISTINCT model_version) FILTER (WHERE role = 'champion'))
            AS logged_champion_versions
    FROM predictions
    GROUP BY score_date, model_name
),
moves AS (
    SELECT model, "at", to_version, action, "by", reason
    FROM promotions
    WHERE alias = 'champion'
)
SELECT
    d.score_date,
    d.model_name,
    m.to_version AS champion_version,
    m."at" AS champion_since,
    m.action AS champion_action,
    m."by" AS champion_by,
    m.reason AS champion_reason,
    d.logged_champion_versions,
    COALESCE(d.logged_champion_versions = [m.to_version], false) AS log_agrees
FROM days AS d
ASOF LEFT JOIN moves AS m
    ON d.model_name = m.model AND d.day_end > m."at"
