-- Grain: one row per (subscriber_id, snapshot_date) in service; recent usage relative to the subscriber's own 90-day baseline.
-- Keys: subscriber_id, snapshot_ts (= snapshot_date + 1 day, 00:00 UTC: the moment the day's data is complete).
-- Inputs: spine (active_subscribers.sql), usage_daily; $start_date, $end_date.
-- Windows of snapshot day d, all ending on or before d (nothing after d is read):
--   recent 7 / 14 / 30 days = d-6 .. d, d-13 .. d, d-29 .. d;  90 days = d-89 .. d;
--   baseline = d-89 .. d-30 (for the 7-day ratio: d-89 .. d-7), so it never overlaps the recent window.
-- Each window is summarised as average use per day with a usage row (use / days with a row), so a
-- newcomer's short history is not a drop in use. A window without a usage row gives NULL, and so does
-- a ratio whose baseline has no row (a subscriber in service for 30 days or less) or averages zero.
-- Windowed sums are differences of running totals looked up as of d, d-7, d-14, d-30 and d-90.
WITH running AS (
    SELECT
        subscriber_id,
        usage_date,
        SUM(data_gb) OVER w AS cum_data_gb,
        SUM(voice_minutes) OVER w AS cum_voice_minutes,
        COUNT(*) OVER w AS cum_active_days
    FROM usage_daily
    WHERE usage_date > CAST($start_date AS DATE) - INTERVAL 91 DAY
      AND usage_date <= CAST($end_date AS DATE)
    WINDOW w AS (PARTITION BY subscriber_id ORDER BY usage_date ROWS UNBOUNDED PRECEDING)
),
spine_lags AS (
    SELECT
        subscriber_id,
        snapshot_date,
        CAST(snapshot_date - INTERVAL 7 DAY AS DATE) AS d7,
        CAST(snapshot_date - INTERVAL 14 DAY AS DATE) AS d14,
        CAST(snapshot_date - INTERVAL 30 DAY AS DATE) AS d30,
        CAST(snapshot_date - INTERVAL 90 DAY AS DATE) AS d90
    FROM spine
),
c0 AS (
    SELECT sp.*, r.cum_data_gb AS g0, r.cum_voice_minutes AS v0, r.cum_active_days AS a0
    FROM spine_lags AS sp
    ASOF LEFT JOIN running AS r
        ON sp.subscriber_id = r.subscriber_id AND sp.snapshot_date >= r.usage_date
),
c7 AS (
    SELECT c.*, r.cum_data_gb AS g7, r.cum_voice_minutes AS v7, r.cum_active_days AS a7
    FROM c0 AS c
    ASOF LEFT JOIN running AS r ON c.subscriber_id = r.subscriber_id AND c.d7 >= r.usage_date
),
c14 AS (
    SELECT c.*, r.cum_data_gb AS g14, r.cum_voice_minutes AS v14, r.cum_active_days AS a14
    FROM c7 AS c
    ASOF LEFT JOIN running AS r ON c.subscriber_id = r.subscriber_id AND c.d14 >= r.usage_date
),
c30 AS (
    SELECT c.*, r.cum_data_gb AS g30, r.cum_voice_minutes AS v30, r.cum_active_days AS a30
    FROM c14 AS c
    ASOF LEFT JOIN running AS r ON c.subscriber_id = r.subscriber_id AND c.d30 >= r.usage_date
),
c90 AS (
    SELECT c.*, r.cum_data_gb AS g90, r.cum_voice_minutes AS v90, r.cum_active_days AS a90
    FROM c30 AS c
    ASOF LEFT JOIN running AS r ON c.subscriber_id = r.subscriber_id AND c.d90 >= r.usage_date
),
per_day AS (  -- average use per day with a usage row in each window; NULL without such a day
    SELECT
        subscriber_id,
        snapshot_date,
        (COALESCE(g0, 0) - COALESCE(g7, 0)) / NULLIF(COALESCE(a0, 0) - COALESCE(a7, 0), 0) AS data_7,
        (COALESCE(g0, 0) - COALESCE(g14, 0)) / NULLIF(COALESCE(a0, 0) - COALESCE(a14, 0), 0) AS data_14,
        (COALESCE(g0, 0) - COALESCE(g30, 0)) / NULLIF(COALESCE(a0, 0) - COALESCE(a30, 0), 0) AS data_30,
        (COALESCE(g0, 0) - COALESCE(g90, 0)) / NULLIF(COALESCE(a0, 0) - COALESCE(a90, 0), 0) AS data_90,
        (COALESCE(g30, 0) - COALESCE(g90, 0)) / NULLIF(COALESCE(a30, 0) - COALESCE(a90, 0), 0) AS data_base,
        (COALESCE(g7, 0) - COALESCE(g90, 0)) / NULLIF(COALESCE(a7, 0) - COALESCE(a90, 0), 0) AS data_base7,
        (COALESCE(v0, 0) - COALESCE(v7, 0)) / NULLIF(COALESCE(a0, 0) - COALESCE(a7, 0), 0) AS voice_7,
        (COALESCE(v0, 0) - COALESCE(v14, 0)) / NULLIF(COALESCE(a0, 0) - COALESCE(a14, 0), 0) AS voice_14,
        (COALESCE(v0, 0) - COALESCE(v30, 0)) / NULLIF(COALESCE(a0, 0) - COALESCE(a30, 0), 0) AS voice_30,
        (COALESCE(v0, 0) - COALESCE(v90, 0)) / NULLIF(COALESCE(a0, 0) - COALESCE(a90, 0), 0) AS voice_90,
        (COALESCE(v30, 0) - COALESCE(v90, 0)) / NULLIF(COALESCE(a30, 0) - COALESCE(a90, 0), 0) AS voice_base,
        (COALESCE(v7, 0) - COALESCE(v90, 0)) / NULLIF(COALESCE(a7, 0) - COALESCE(a90, 0), 0) AS voice_base7
    FROM c90
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
