-- Grain: one row per (subscriber_id, snapshot_date) in service; the attributes an import declared, as last observed on or before snapshot_date.
-- Keys: subscriber_id, snapshot_ts (= snapshot_date + 1 day, 00:00 UTC: the moment the day's data is complete).
-- Inputs: spine (active_subscribers.sql), subscriber_attributes (subscriber_id, observed_date, one column per attribute; a shard's ids), subscriber_attributes_all (every id: for the source's first observation day), subscriber_attributes_backfill (one row: from_day, or NULL).
-- Strictly as of each day, with one exception: the days from from_day (NULL: the eve of the
-- source's first observation day) to that day take the first observation's values. A cold start
-- from one export (train --cold-start) learns from those days: the export's eve (a churn flag)
-- or the day a label horizon before it (cancellation dates), days on which everyone in the
-- export the label counts was in service. Every other day before a subscriber's first
-- observation has no attributes. Every attribute column is given; the build keeps those the
-- feature definitions declare.
WITH lookups AS (
    SELECT sp.subscriber_id, sp.snapshot_date,
           CASE WHEN sp.snapshot_date < f.first_day
                 AND sp.snapshot_date >= COALESCE(b.from_day, f.first_day - 1) THEN f.first_day
                ELSE sp.snapshot_date END AS looked_up
    FROM spine AS sp
    CROSS JOIN (SELECT MIN(observed_date) AS first_day FROM subscriber_attributes_all) AS f
    CROSS JOIN subscriber_attributes_backfill AS b
)
SELECT
    l.subscriber_id,
    timezone('UTC', CAST(l.snapshot_date + INTERVAL 1 DAY AS TIMESTAMP)) AS snapshot_ts,
    a.* EXCLUDE (subscriber_id, observed_date),
    l.snapshot_date
FROM lookups AS l
ASOF LEFT JOIN subscriber_attributes AS a
    ON l.subscriber_id = a.subscriber_id AND l.looked_up >= a.observed_date
