-- Grain: one row per (subscriber_id, score_date) for every subscriber in service on a score date.
-- Keys: subscriber_id, score_date.
-- Inputs: spine (features/active_subscribers.sql over the score dates; cancellations ride along
-- as cancel_date); $horizon_days.
-- The realized outcome of a night's predictions, by the rule of labels/churned_30d.sql, so a
-- realized label is the training label of that subscriber and day: churned_30d = the first day
-- without service falls in (d, d + horizon]. Only mature once the source data reaches
-- d + horizon (tasks/monitoring/performance.py refuses earlier days): before that a churner reads as a stayer.
SELECT
    sp.subscriber_id,
    sp.snapshot_date AS score_date,
    CAST(
        sp.cancel_date IS NOT NULL
        AND sp.cancel_date <= sp.snapshot_date + to_days(CAST($horizon_days AS INTEGER))
        AS TINYINT
    ) AS churned_30d
FROM spine AS sp
ORDER BY sp.snapshot_date, sp.subscriber_id
