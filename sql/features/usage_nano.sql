-- Grain: one row per (subscriber_id, usage_date): usage_daily with data and voice as exact integers.
-- Keys: subscriber_id, usage_date.
-- Inputs: usage_daily.
-- data_gb and voice_minutes become whole nano-units (round(x * 1e9); the usage contract caps a day
-- at 1,000 GB and 1,440 minutes, so 90 days stay far below 2^63). Integer window sums are exact:
-- a window carried from the day before (usage_windows_step.sql) equals the same window summed from
-- scratch (usage_windows.sql) bit for bit, however many days it was carried. The feature formulas
-- divide by 1e9 again (subscriber_usage_30d.sql, subscriber_usage_90d.sql).
SELECT
    subscriber_id,
    usage_date,
    CAST(round(data_gb * 1e9) AS BIGINT) AS data_nano,
    CAST(round(voice_minutes * 1e9) AS BIGINT) AS voice_nano,
    CAST(dropped_calls AS BIGINT) AS dropped_calls
FROM usage_daily
