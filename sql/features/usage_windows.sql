-- Grain: one row per subscriber_id with a usage row in the 90 days ending on $snapshot_date: that
--        day's usage windows, the state the incremental build carries from one day to the next.
-- Keys: subscriber_id.
-- Inputs: usage_nano (usage_nano.sql); $snapshot_date.
-- Windows of day d, all ending on d: 7 / 14 / 30 / 90 days = d-6 .. d, d-13 .. d, d-29 .. d, d-89 .. d.
-- Per window: data and voice in nano-units, days with a usage row; dropped calls for 30 days only.
-- The from-scratch definition: summed over the 90 days here. usage_windows_step.sql reaches the
-- same rows from the day before; both must keep these columns in this order.
SELECT
    subscriber_id,
    CAST(COALESCE(SUM(data_nano) FILTER (WHERE usage_date > $snapshot_date - 7), 0) AS BIGINT) AS data_7,
    CAST(COALESCE(SUM(data_nano) FILTER (WHERE usage_date > $snapshot_date - 14), 0) AS BIGINT) AS data_14,
    CAST(COALESCE(SUM(data_nano) FILTER (WHERE usage_date > $snapshot_date - 30), 0) AS BIGINT) AS data_30,
    CAST(SUM(data_nano) AS BIGINT) AS data_90,
    CAST(COALESCE(SUM(voice_nano) FILTER (WHERE usage_date > $snapshot_date - 7), 0) AS BIGINT) AS voice_7,
    CAST(COALESCE(SUM(voice_nano) FILTER (WHERE usage_date > $snapshot_date - 14), 0) AS BIGINT) AS voice_14,
    CAST(COALESCE(SUM(voice_nano) FILTER (WHERE usage_date > $snapshot_date - 30), 0) AS BIGINT) AS voice_30,
    CAST(SUM(voice_nano) AS BIGINT) AS voice_90,
    CAST(COUNT(*) FILTER (WHERE usage_date > $snapshot_date - 7) AS BIGINT) AS days_7,
    CAST(COUNT(*) FILTER (WHERE usage_date > $snapshot_date - 14) AS BIGINT) AS days_14,
    CAST(COUNT(*) FILTER (WHERE usage_date > $snapshot_date - 30) AS BIGINT) AS days_30,
    CAST(COUNT(*) AS BIGINT) AS days_90,
    CAST(COALESCE(SUM(dropped_calls) FILTER (WHERE usage_date > $snapshot_date - 30), 0) AS BIGINT)
        AS dropped_calls_30
FROM usage_nano
WHERE usage_date > CAST($snapshot_date AS DATE) - 90
  AND usage_date <= CAST($snapshot_date AS DATE)
GROUP BY subscriber_id
