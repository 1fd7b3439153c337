-- Grain: one row per (subscriber_id, snapshot_date) in service; usage in the 7 and 30 days ending on snapshot_date.
-- Keys: subscriber_id, snapshot_ts (= snapshot_date + 1 day, 00:00 UTC: the moment the day's data is complete).
-- Inputs: spine (active_subscribers.sql), usage_windows (the windows of $snapshot_date: usage_windows.sql,
--         or usage_windows_step.sql from the day before); $snapshot_date (one day per run).
-- A subscriber without a usage row in a window has zero use in it (a day without a row counts as
-- zero use instead of hiding the window). Sums come in nano-units (usage_nano.sql): / 1e9.
WITH windows AS (
    SELECT
        sp.subscriber_id,
        sp.snapshot_date,
        CAST(COALESCE(u.data_7, 0) AS DOUBLE) / 1e9 AS data_gb_7d,
        CAST(COALESCE(u.data_30, 0) AS DOUBLE) / 1e9 AS data_gb_30d,
        CAST(COALESCE(u.voice_7, 0) AS DOUBLE) / 1e9 AS voice_minutes_7d,
        CAST(COALESCE(u.voice_30, 0) AS DOUBLE) / 1e9 AS voice_minutes_30d,
        COALESCE(u.dropped_calls_30, 0) AS dropped_calls_30d,
        COALESCE(u.days_30, 0) AS active_days_30d
    FROM spine AS sp
    LEFT JOIN usage_windows AS u USING (subscriber_id)
    WHERE sp.snapshot_date = CAST($snapshot_date AS DATE)
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
    -- Network quality as the subscriber meets it, apart from how much they call: dropped calls
    -- per 100 call minutes (NULL without a call minute, where there is nothing to drop).
    CAST(CASE WHEN voice_minutes_30d > 0 THEN 100.0 * dropped_calls_30d / voice_minutes_30d END AS FLOAT)
        AS dropped_call_rate_30d,
    snapshot_date
FROM windows
