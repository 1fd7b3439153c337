-- Grain: one row per (subscriber_id, snapshot_date) in service on each training snapshot date.
-- Keys: subscriber_id, event_timestamp (= snapshot_date + 1 day, 00:00 UTC: when the day's features are complete).
-- Inputs: spine (active_subscribers.sql over the training snapshot days), subscribers; $horizon_days.
-- churned_30d = the subscriber's first day without service falls in (d, d + horizon]. Protected
-- attributes ride along as separate columns for the fairness evaluation; they are never features.
SELECT
    sp.subscriber_id,
    timezone('UTC', CAST(sp.snapshot_date + INTERVAL 1 DAY AS TIMESTAMP)) AS event_timestamp,
    sp.snapshot_date,
    CAST(
        sp.cancel_date IS NOT NULL
        AND sp.cancel_date <= sp.snapshot_date + to_days(CAST($horizon_days AS INTEGER))
        AS TINYINT
    ) AS churned_30d,
    s.age_band,
    s.gender,
    s.region
FROM spine AS sp
JOIN subscribers AS s USING (subscriber_id)
ORDER BY sp.snapshot_date, sp.subscriber_id
