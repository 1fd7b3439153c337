-- Grain: one row per (subscriber_id, snapshot_date) for every subscriber in service on that day.
-- Keys: subscriber_id, snapshot_date.
-- Inputs: subscribers, cancellations; $start_date, $end_date (inclusive snapshot range).
-- In service on d: signed up on or before d and no cancellation taking effect on or before d
-- (cancel_date is the first day without service).
SELECT
    s.subscriber_id,
    d.snapshot_date,
    s.signup_date
FROM subscribers AS s
LEFT JOIN cancellations AS c USING (subscriber_id)
JOIN (
    SELECT CAST(day AS DATE) AS snapshot_date
    FROM generate_series(CAST($start_date AS TIMESTAMP), CAST($end_date AS TIMESTAMP), INTERVAL 1 DAY) AS t(day)
) AS d
    ON s.signup_date <= d.snapshot_date
   AND (c.cancel_date IS NULL OR c.cancel_date > d.snapshot_date)
