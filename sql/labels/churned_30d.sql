-- Grain: one row per (subscriber_id, snapshot_date) in service on each training snapshot date.
-- Keys: subscriber_id, event_timestamp (= snapshot_date 00:00 UTC).
-- Inputs: subscribers, cancellations; $snapshot_dates (DATE[]), $horizon_days.
-- churned_30d = the subscriber's first day without service falls in (d, d + horizon]. Protected
-- attributes ride along as separate columns for the fairness evaluation; they are never features.
SELECT
    s.subscriber_id,
    timezone('UTC', CAST(d.snapshot_date AS TIMESTAMP)) AS event_timestamp,
    d.snapshot_date,
    CAST(
        c.cancel_date IS NOT NULL
        AND c.cancel_date <= d.snapshot_date + to_days(CAST($horizon_days AS INTEGER))
        AS TINYINT
    ) AS churned_30d,
    s.age_band,
    s.gender,
    s.region
FROM subscribers AS s
LEFT JOIN cancellations AS c USING (subscriber_id)
JOIN (SELECT unnest(CAST($snapshot_dates AS DATE[])) AS snapshot_date) AS d
    ON s.signup_date <= d.snapshot_date
   AND (c.cancel_date IS NULL OR c.cancel_date > d.snapshot_date)
ORDER BY d.snapshot_date, s.subscriber_id
