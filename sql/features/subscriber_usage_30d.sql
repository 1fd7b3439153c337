-- Grain: one row per (subscriber_id, snapshot_date) in service; usage in the 7 and 30 days ending on snapshot_date.
-- Keys: subscriber_id, snapshot_ts (= snapshot_date + 1 day, 00:00 UTC: the moment the day's data is complete).
-- Inputs: spine (active_subscribers.sql), usage_daily; $start_date.
-- Windowed sums are differences of running totals looked up as of d, d-7 and d-30, so a day
-- without a usage row counts as zero use instead of hiding the window.
WITH running AS (
    SELECT
        subscriber_id,
        usage_date,
        SUM(data_gb) OVER w AS cum_data_gb,
        SUM(voice_minutes) OVER w AS cum_voice_minutes,
        SUM(dropped_calls) OVER w AS cum_dropped_calls,
        COUNT(*) OVER w AS cum_active_days
    FROM usage_daily
    WHERE usage_date > CAST($start_date AS DATE) - INTERVAL 31 DAY
      AND usage_date <= CAST($end_date AS DATE)
    WINDOW w AS (PARTITION BY subscriber_id ORDER BY usage_date ROWS UNBOUNDED PRECEDING)
),
spine_lags AS (
    SELECT
        subscriber_id,
        snapshot_date,
        CAST(snapshot_date - INTERVAL 7 DAY AS DATE) AS d7,
        CAST(snapshot_date - INTERVAL 30 DAY AS DATE) AS d30
    FROM spine
),
now AS (
    SELECT sp.*, r.cum_data_gb, r.cum_voice_minutes, r.cum_dropped_calls, r.cum_active_days
    FROM spine_lags AS sp
    ASOF LEFT JOIN running AS r
        ON sp.subscriber_id = r.subscriber_id AND sp.snapshot_date >= r.usage_date
),
lag7 AS (
    SELECT n.*, r.cum_data_gb AS cum_data_gb_7, r.cum_voice_minutes AS cum_voice_minutes_7
    FROM now AS n
    ASOF LEFT JOIN running AS r
        ON n.subscriber_id = r.subscriber_id AND n.d7 >= r.usage_date
),
lag30 AS (
    SELECT
        l.*,
        r.cum_data_gb AS cum_data_gb_30,
        r.cum_voice_minutes AS cum_voice_minutes_30,
        r.cum_dropped_calls AS cum_dropped_calls_30,
        r.cum_active_days AS cum_active_days_30
    FROM lag7 AS l
    ASOF LEFT JOIN running AS r
        ON l.subscriber_id = r.subscriber_id AND l.d30 >= r.usage_date
),
windows AS (
    SELECT
        subscriber_id,
        snapshot_date,
        COALESCE(cum_data_gb, 0) - COALESCE(cum_data_gb_7, 0) AS data_gb_7d,
        COALESCE(cum_data_gb, 0) - COALESCE(cum_data_gb_30, 0) AS data_gb_30d,
        COALESCE(cum_voice_minutes, 0) - COALESCE(cum_voice_minutes_7, 0) AS voice_minutes_7d,
        COALESCE(cum_voice_minutes, 0) - COALESCE(cum_voice_minutes_30, 0) AS voice_minutes_30d,
        COALESCE(cum_dropped_calls, 0) - COALESCE(cum_dropped_calls_30, 0) AS dropped_calls_30d,
        COALESCE(cum_active_days, 0) - COALESCE(cum_active_days_30, 0) AS active_days_30d
    FROM lag30
)
SELECT
    subscriber_id,
    timezone('UTC', CAST(snapshot_date + INTERVAL 1 DAY AS TIMESTAMP)) AS snapshot_ts,
    CAST(data_gb_7d AS FLOAT) AS data_gb_7d,
    CAST(data_gb_30d AS FLOAT) AS data_gb_30d,
    -- Daily average over the last week relative to the last month: < 1 means use is falling.
    CAST(CASE WHEN data_gb_30d > 0 THEN (data_gb_7d / 7.0) / (data_gb_30d / 30.0) END AS FLOAT)
        AS data_trend_7d_30d,
    CAST(voice_minutes_7d AS FLOAT) AS voice_minutes_7d,
    CAST(voice_minutes_30d AS FLOAT) AS voice_minutes_30d,
    CAST(dropped_calls_30d AS INTEGER) AS dropped_calls_30d,
    CAST(active_days_30d AS INTEGER) AS active_days_30d,
    snapshot_date
FROM windows
