-- Grain: as usage_windows.sql: one row per subscriber_id with a usage row in the 90 days ending on
--        $snapshot_date, the usage windows of that day.
-- Keys: subscriber_id.
-- Inputs: usage_windows_before (the windows of $snapshot_date - 1, usage_windows.sql's columns),
--         usage_nano (usage_nano.sql); $snapshot_date.
-- The window of k days ending on d is the one ending on d-1, plus day d, minus day d-k (the day
-- that leaves it): five days of usage are read instead of 90. Integer sums, so the result equals
-- usage_windows.sql for the same day exactly. A subscriber whose 90-day window empties drops out.
WITH moves AS (
    SELECT
        subscriber_id,
        SUM(CASE WHEN usage_date = $snapshot_date THEN data_nano ELSE 0 END)
            - SUM(CASE WHEN usage_date = $snapshot_date - 7 THEN data_nano ELSE 0 END) AS data_7,
        SUM(CASE WHEN usage_date = $snapshot_date THEN data_nano ELSE 0 END)
            - SUM(CASE WHEN usage_date = $snapshot_date - 14 THEN data_nano ELSE 0 END) AS data_14,
        SUM(CASE WHEN usage_date = $snapshot_date THEN data_nano ELSE 0 END)
            - SUM(CASE WHEN usage_date = $snapshot_date - 30 THEN data_nano ELSE 0 END) AS data_30,
        SUM(CASE WHEN usage_date = $snapshot_date THEN data_nano ELSE 0 END)
            - SUM(CASE WHEN usage_date = $snapshot_date - 90 THEN data_nano ELSE 0 END) AS data_90,
        SUM(CASE WHEN usage_date = $snapshot_date THEN voice_nano ELSE 0 END)
            - SUM(CASE WHEN usage_date = $snapshot_date - 7 THEN voice_nano ELSE 0 END) AS voice_7,
        SUM(CASE WHEN usage_date = $snapshot_date THEN voice_nano ELSE 0 END)
            - SUM(CASE WHEN usage_date = $snapshot_date - 14 THEN voice_nano ELSE 0 END) AS voice_14,
        SUM(CASE WHEN usage_date = $snapshot_date THEN voice_nano ELSE 0 END)
            - SUM(CASE WHEN usage_date = $snapshot_date - 30 THEN voice_nano ELSE 0 END) AS voice_30,
        SUM(CASE WHEN usage_date = $snapshot_date THEN voice_nano ELSE 0 END)
            - SUM(CASE WHEN usage_date = $snapshot_date - 90 THEN voice_nano ELSE 0 END) AS voice_90,
        COUNT(*) FILTER (WHERE usage_date = $snapshot_date)
            - COUNT(*) FILTER (WHERE usage_date = $snapshot_date - 7) AS days_7,
        COUNT(*) FILTER (WHERE usage_date = $snapshot_date)
            - COUNT(*) FILTER (WHERE usage_date = $snapshot_date - 14) AS days_14,
        COUNT(*) FILTER (WHERE usage_date = $snapshot_date)
            - COUNT(*) FILTER (WHERE usage_date = $snapshot_date - 30) AS days_30,
        COUNT(*) FILTER (WHERE usage_date = $snapshot_date)
            - COUNT(*) FILTER (WHERE usage_date = $snapshot_date - 90) AS days_90,
        SUM(CASE WHEN usage_date = $snapshot_date THEN dropped_calls ELSE 0 END)
            - SUM(CASE WHEN usage_date = $snapshot_date - 30 THEN dropped_calls ELSE 0 END)
            AS dropped_calls_30
    FROM usage_nano
    WHERE usage_date IN (
        CAST($snapshot_date AS DATE),
        CAST($snapshot_date AS DATE) - 7,
        CAST($snapshot_date AS DATE) - 14,
        CAST($snapshot_date AS DATE) - 30,
        CAST($snapshot_date AS DATE) - 90
    )
    GROUP BY subscriber_id
)
SELECT
    subscriber_id,
    CAST(COALESCE(b.data_7, 0) + COALESCE(m.data_7, 0) AS BIGINT) AS data_7,
    CAST(COALESCE(b.data_14, 0) + COALESCE(m.data_14, 0) AS BIGINT) AS data_14,
    CAST(COALESCE(b.data_30, 0) + COALESCE(m.data_30, 0) AS BIGINT) AS data_30,
    CAST(COALESCE(b.data_90, 0) + COALESCE(m.data_90, 0) AS BIGINT) AS data_90,
    CAST(COALESCE(b.voice_7, 0) + COALESCE(m.voice_7, 0) AS BIGINT) AS voice_7,
    CAST(COALESCE(b.voice_14, 0) + COALESCE(m.voice_14, 0) AS BIGINT) AS voice_14,
    CAST(COALESCE(b.voice_30, 0) + COALESCE(m.voice_30, 0) AS BIGINT) AS voice_30,
    CAST(COALESCE(b.voice_90, 0) + COALESCE(m.voice_90, 0) AS BIGINT) AS voice_90,
    CAST(COALESCE(b.days_7, 0) + COALESCE(m.days_7, 0) AS BIGINT) AS days_7,
    CAST(COALESCE(b.days_14, 0) + COALESCE(m.days_14, 0) AS BIGINT) AS days_14,
    CAST(COALESCE(b.days_30, 0) + COALESCE(m.days_30, 0) AS BIGINT) AS days_30,
    CAST(COALESCE(b.days_90, 0) + COALESCE(m.days_90, 0) AS BIGINT) AS days_90,
    CAST(COALESCE(b.dropped_calls_30, 0) + COALESCE(m.dropped_calls_30, 0) AS BIGINT)
        AS dropped_calls_30
FROM usage_windows_before AS b
FULL OUTER JOIN moves AS m USING (subscriber_id)
WHERE COALESCE(b.days_90, 0) + COALESCE(m.days_90, 0) > 0
