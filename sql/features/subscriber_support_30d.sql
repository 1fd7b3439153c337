-- Grain: one row per (subscriber_id, snapshot_date) in service; support tickets opened in the 7 and 30 days ending on snapshot_date.
-- Keys: subscriber_id, snapshot_ts (= snapshot_date + 1 day, 00:00 UTC: the moment the day's data is complete).
-- Inputs: spine (active_subscribers.sql), support_tickets; $start_date, $end_date.
WITH daily AS (
    SELECT
        subscriber_id,
        opened_date,
        COUNT(*) AS tickets,
        COUNT(*) FILTER (WHERE category = 'network') AS network_tickets
    FROM support_tickets
    WHERE opened_date > CAST($start_date AS DATE) - INTERVAL 31 DAY
      AND opened_date <= CAST($end_date AS DATE)
    GROUP BY ALL
),
running AS (
    SELECT
        subscriber_id,
        opened_date,
        SUM(tickets) OVER w AS cum_tickets,
        SUM(network_tickets) OVER w AS cum_network_tickets
    FROM daily
    WINDOW w AS (PARTITION BY subscriber_id ORDER BY opened_date ROWS UNBOUNDED PRECEDING)
),
now AS (
    SELECT
        sp.subscriber_id,
        sp.snapshot_date,
        CAST(sp.snapshot_date - INTERVAL 7 DAY AS DATE) AS d7,
        CAST(sp.snapshot_date - INTERVAL 30 DAY AS DATE) AS d30,
        r.cum_tickets,
        r.cum_network_tickets
    FROM spine AS sp
    ASOF LEFT JOIN running AS r
        ON sp.subscriber_id = r.subscriber_id AND sp.snapshot_date >= r.opened_date
),
lag7 AS (
    SELECT n.*, r.cum_tickets AS cum_tickets_7
    FROM now AS n
    ASOF LEFT JOIN running AS r ON n.subscriber_id = r.subscriber_id AND n.d7 >= r.opened_date
),
lag30 AS (
    SELECT l.*, r.cum_tickets AS cum_tickets_30, r.cum_network_tickets AS cum_network_tickets_30
    FROM lag7 AS l
    ASOF LEFT JOIN running AS r ON l.subscriber_id = r.subscriber_id AND l.d30 >= r.opened_date
)
SELECT
    subscriber_id,
    timezone('UTC', CAST(snapshot_date + INTERVAL 1 DAY AS TIMESTAMP)) AS snapshot_ts,
    CAST(COALESCE(cum_tickets, 0) - COALESCE(cum_tickets_7, 0) AS INTEGER) AS support_calls_7d,
    CAST(COALESCE(cum_tickets, 0) - COALESCE(cum_tickets_30, 0) AS INTEGER) AS support_calls_30d,
    CAST(COALESCE(cum_network_tickets, 0) - COALESCE(cum_network_tickets_30, 0) AS INTEGER)
        AS network_tickets_30d,
    snapshot_date
FROM lag30
