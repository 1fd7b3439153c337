-- Grain: one row per (subscriber_id, snapshot_date) for every subscriber in service on that day.
-- Keys: subscriber_id, snapshot_date.
-- Inputs: subscribers, cancellations; $snapshot_dates (DATE[]: the days wanted).
-- In service on d: signed up on or before d and no cancellation taking effect on or before d
-- (cancel_date is the first day without service). The one definition of "active" that feature
-- tables, training labels and scoring all use.
SELECT
    s.subscriber_id,
    d.snapshot_date,
    s.signup_date,
    c.cancel_date
FROM subscribers AS s
LEFT JOIN cancellations AS c USING (subscriber_id)
JOIN (SELECT unnest(CAST($snapshot_dates AS DATE[])) AS snapshot_date) AS d
    ON s.signup_date <= d.snapshot_date
   AND (c.cancel_date IS NULL OR c.cancel_date > d.snapshot_date)
