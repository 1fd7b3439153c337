-- Grain: one row per (subscriber_id, snapshot_date) in service; the attributes an import declared, as last observed on or before snapshot_date.
-- Keys: subscriber_id, snapshot_ts (= snapshot_date + 1 day, 00:00 UTC: the moment the day's data is complete).
-- Inputs: spine (active_subscribers.sql), subscriber_attributes (subscriber_id, observed_date, one column per attribute).
-- Before a subscriber's first observation the first one stands in: an export describes its
-- subscribers, as the subscribers table describes their region or contract, and a model started
-- from one export (train --cold-start) learns from the day before it. Later observations take
-- over from their own day on, never earlier. Every attribute column is given; the build keeps
-- those the feature definitions declare.
WITH firsts AS (
    SELECT subscriber_id, MIN(observed_date) AS first_observed
    FROM subscriber_attributes
    GROUP BY subscriber_id
),
lookups AS (
    SELECT sp.subscriber_id, sp.snapshot_date,
           GREATEST(sp.snapshot_date, COALESCE(f.first_observed, sp.snapshot_date)) AS looked_up
    FROM spine AS sp
    LEFT JOIN firsts AS f USING (subscriber_id)
)
SELECT
    l.subscriber_id,
    timezone('UTC', CAST(l.snapshot_date + INTERVAL 1 DAY AS TIMESTAMP)) AS snapshot_ts,
    a.* EXCLUDE (subscriber_id, observed_date),
    l.snapshot_date
FROM lookups AS l
ASOF LEFT JOIN subscriber_attributes AS a
    ON l.subscriber_id = a.subscriber_id AND l.looked_up >= a.observed_date
