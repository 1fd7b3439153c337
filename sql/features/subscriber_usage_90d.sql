-- Grain: one row per (subscriber_id, snapshot_date) in service; recent usage relative to the subscriber's own 90-day baseline.
-- Keys: subscriber_id, snapshot_ts (= snapshot_date + 1 day, 00:00 UTC: the moment the day's data is complete).
-- Inputs: spine (active_subscribers.sql), usage_windows (the windows of $snapshot_date: usage_windows.sql,
--         or usage_windows_step.sql from the day before); $snapshot_date (one day per run).
-- Windows of snapshot day d, all ending on or before d (nothing after d is read):
--   recent 7 / 14 / 30 days = d-6 .. d, d-13 .. d, d-29 .. d;  90 days = d-89 .. d;
--   baseline = d-89 .. d-30 (for the 7-day ratio: d-89 .. d-7), so it never overlaps the recent window.
-- Each window is summarised as average use per day with a usage row (use / days with a row), so a
-- newcomer's short history is not a drop in use. A window without a usage row gives NULL, and so does
-- a ratio whose baseline has no row (a subscriber in service for 30 days or less) or averages zero.
-- Baselines are differences of windows (90 days less the recent ones), taken on the exact integer
-- sums (nano-units, usage_nano.sql) before dividing by 1e9.
WITH windows AS (
    SELECT
        sp.subscriber_id,
        sp.snapshot_date,
        COALESCE(u.data_7, 0) AS g7, COALESCE(u.data_14, 0) AS g14,
        COALESCE(u.data_30, 0) AS g30, COALESCE(u.data_90, 0) AS g90,
        COALESCE(u.voice_7, 0) AS v7, COALESCE(u.voice_14, 0) AS v14,
        COALESCE(u.voice_30, 0) AS v30, COALESCE(u.voice_90, 0) AS v90,
        COALESCE(u.days_7, 0) AS a7, COALESCE(u.days_14, 0) AS a14,
        COALESCE(u.days_30, 0) AS a30, COALESCE(u.days_90, 0) AS a90
    FROM spine AS sp
    LEFT JOIN usage_windows AS u USING (subscriber_id)
    WHERE sp.snapshot_date = CAST($snapshot_date AS DATE)
),
per_day AS (  -- average use per day with a usage row in each window; NULL without such a day
    SELECT
        subscriber_id,
        snapshot_date,
        CAST(g7 AS DOUBLE) / 1e9 / NULLIF(a7, 0) AS data_7,
        CAST(g14 AS DOUBLE) / 1e9 / NULLIF(a14, 0) AS data_14,
        CAST(g30 AS DOUBLE) / 1e9 / NULLIF(a30, 0) AS data_30,
        CAST(g90 AS DOUBLE) / 1e9 / NULLIF(a90, 0) AS data_90,
        CAST(g90 - g30 AS DOUBLE) / 1e9 / NULLIF(a90 - a30, 0) AS data_base,
        CAST(g90 - g7 AS DOUBLE) / 1e9 / NULLIF(a90 - a7, 0) AS data_base7,
        CAST(v7 AS DOUBLE) / 1e9 / NULLIF(a7, 0) AS voice_7,
        CAST(v14 AS DOUBLE) / 1e9 / NULLIF(a14, 0) AS voice_14,
        CAST(v30 AS DOUBLE) / 1e9 / NULLIF(a30, 0) AS voice_30,
        CAST(v90 AS DOUBLE) / 1e9 / NULLIF(a90, 0) AS voice_90,
        CAST(v90 - v30 AS DOUBLE) / 1e9 / NULLIF(a90 - a30, 0) AS voice_base,
        CAST(v90 - v7 AS DOUBLE) / 1e9 / NULLIF(a90 - a7, 0) AS voice_base7
    FROM windows
),
ratios AS (
    SELECT
        subscriber_id,
        snapshot_date,
        data_90,
        voice_90,
        data_30 / NULLIF(data_base, 0) AS data_ratio_30,
        data_14 / NULLIF(data_base, 0) AS data_ratio_14,
        data_7 / NULLIF(data_base7, 0) AS data_ratio_7,
        voice_30 / NULLIF(voice_base, 0) AS voice_ratio_30,
        voice_14 / NULLIF(voice_base, 0) AS voice_ratio_14,
        voice_7 / NULLIF(voice_base7, 0) AS voice_ratio_7
    FROM per_day
)
SELECT
    subscriber_id,
    timezone('UTC', CAST(snapshot_date + INTERVAL 1 DAY AS TIMESTAMP)) AS snapshot_ts,
    CAST(data_90 AS FLOAT) AS data_gb_per_day_90d,
    CAST(voice_90 AS FLOAT) AS voice_minutes_per_day_90d,
    -- Recent use per day over the baseline's use per day: < 1 means using less than usual.
    CAST(data_ratio_30 AS FLOAT) AS data_ratio_30d_baseline,
    CAST(data_ratio_14 AS FLOAT) AS data_ratio_14d_baseline,
    CAST(data_ratio_7 AS FLOAT) AS data_ratio_7d_baseline,
    CAST(voice_ratio_30 AS FLOAT) AS voice_ratio_30d_baseline,
    CAST(voice_ratio_14 AS FLOAT) AS voice_ratio_14d_baseline,
    CAST(voice_ratio_7 AS FLOAT) AS voice_ratio_7d_baseline,
    -- Data and voice both scale with engagement under independent noise: their geometric mean is the
    -- less noisy signal (NULL when either ratio is).
    CAST(sqrt(data_ratio_30 * voice_ratio_30) AS FLOAT) AS usage_ratio_30d_baseline,
    CAST(sqrt(data_ratio_14 * voice_ratio_14) AS FLOAT) AS usage_ratio_14d_baseline,
    CAST(sqrt(data_ratio_7 * voice_ratio_7) AS FLOAT) AS usage_ratio_7d_baseline,
    snapshot_date
FROM ratios
