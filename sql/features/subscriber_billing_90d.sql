-- Grain: one row per (subscriber_id, snapshot_date) in service; bills known late in the 90 days ending on snapshot_date.
-- Keys: subscriber_id, snapshot_ts (= snapshot_date + 1 day, 00:00 UTC: the moment the day's data is complete).
-- Inputs: spine (active_subscribers.sql), billing; $start_date, $end_date.
-- A bill is known to be late on due_date + 1 (unpaid at the due date), not on bill_date: counting
-- it any earlier would leak the future into the snapshot.
WITH known AS (
    SELECT
        subscriber_id,
        CAST(due_date + INTERVAL 1 DAY AS DATE) AS known_date,
        COUNT(*) AS late_bills
    FROM billing
    WHERE days_late > 0
      AND due_date + INTERVAL 1 DAY > CAST($start_date AS DATE) - INTERVAL 91 DAY
      AND due_date + INTERVAL 1 DAY <= CAST($end_date AS DATE)
    GROUP BY ALL
),
issued AS (
    SELECT subscriber_id, bill_date, COUNT(*) AS bills
    FROM billing
    WHERE bill_date > CAST($start_date AS DATE) - INTERVAL 91 DAY
      AND bill_date <= CAST($end_date AS DATE)
    GROUP BY ALL
),
running_late AS (
    SELECT subscriber_id, known_date,
           SUM(late_bills) OVER (PARTITION BY subscriber_id ORDER BY known_date ROWS UNBOUNDED PRECEDING) AS cum_late
    FROM known
),
running_bills AS (
    SELECT subscriber_id, bill_date,
           SUM(bills) OVER (PARTITION BY subscriber_id ORDER BY bill_date ROWS UNBOUNDED PRECEDING) AS cum_bills
    FROM issued
),
spine_lags AS (
    SELECT subscriber_id, snapshot_date, CAST(snapshot_date - INTERVAL 90 DAY AS DATE) AS d90
    FROM spine
),
late_now AS (
    SELECT sp.*, r.cum_late
    FROM spine_lags AS sp
    ASOF LEFT JOIN running_late AS r ON sp.subscriber_id = r.subscriber_id AND sp.snapshot_date >= r.known_date
),
late_lag AS (
    SELECT l.*, r.cum_late AS cum_late_90
    FROM late_now AS l
    ASOF LEFT JOIN running_late AS r ON l.subscriber_id = r.subscriber_id AND l.d90 >= r.known_date
),
bills_now AS (
    SELECT l.*, r.cum_bills
    FROM late_lag AS l
    ASOF LEFT JOIN running_bills AS r ON l.subscriber_id = r.subscriber_id AND l.snapshot_date >= r.bill_date
),
bills_lag AS (
    SELECT b.*, r.cum_bills AS cum_bills_90
    FROM bills_now AS b
    ASOF LEFT JOIN running_bills AS r ON b.subscriber_id = r.subscriber_id AND b.d90 >= r.bill_date
)
SELECT
    subscriber_id,
    timezone('UTC', CAST(snapshot_date + INTERVAL 1 DAY AS TIMESTAMP)) AS snapshot_ts,
    CAST(COALESCE(cum_late, 0) - COALESCE(cum_late_90, 0) AS INTEGER) AS late_payments_90d,
    CAST(COALESCE(cum_bills, 0) - COALESCE(cum_bills_90, 0) AS INTEGER) AS bills_90d,
    snapshot_date
FROM bills_lag
