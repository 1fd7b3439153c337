-- Grain: one row per (subscriber_id, snapshot_date) in service; plan, contract and charges as of snapshot_date.
-- Keys: subscriber_id, snapshot_ts (= snapshot_date + 1 day, 00:00 UTC: the moment the day's data is complete).
-- Inputs: spine (active_subscribers.sql), subscribers, plan_changes, plan_catalog (plan, list_price); $start_date, $end_date.
-- Plan and charge come from the latest plan change on or before the day (else the signup values);
-- the charge 90 days ago is taken as of max(d - 90, signup_date), so a newcomer's change is since signup.
WITH changes AS (
    SELECT subscriber_id, change_date, new_plan, new_monthly_charge
    FROM plan_changes
    WHERE change_date <= CAST($end_date AS DATE)
),
change_counts AS (
    SELECT subscriber_id, change_date,
           COUNT(*) OVER (PARTITION BY subscriber_id ORDER BY change_date ROWS UNBOUNDED PRECEDING) AS cum_changes
    FROM changes
),
base AS (
    SELECT
        sp.subscriber_id,
        sp.snapshot_date,
        s.signup_date,
        s.contract_type,
        s.payment_method,
        s.plan AS signup_plan,
        s.monthly_charge AS signup_charge,
        CAST(GREATEST(sp.snapshot_date - INTERVAL 90 DAY, s.signup_date) AS DATE) AS d90
    FROM spine AS sp
    JOIN subscribers AS s USING (subscriber_id)
),
current_plan AS (
    SELECT b.*, c.new_plan AS changed_plan, c.new_monthly_charge AS changed_charge
    FROM base AS b
    ASOF LEFT JOIN changes AS c ON b.subscriber_id = c.subscriber_id AND b.snapshot_date >= c.change_date
),
past_plan AS (
    SELECT p.*, c.new_monthly_charge AS changed_charge_90
    FROM current_plan AS p
    ASOF LEFT JOIN changes AS c ON p.subscriber_id = c.subscriber_id AND p.d90 >= c.change_date
),
counts_now AS (
    SELECT p.*, n.cum_changes
    FROM past_plan AS p
    ASOF LEFT JOIN change_counts AS n ON p.subscriber_id = n.subscriber_id AND p.snapshot_date >= n.change_date
),
counts_then AS (
    SELECT c.*, n.cum_changes AS cum_changes_90
    FROM counts_now AS c
    ASOF LEFT JOIN change_counts AS n
        ON c.subscriber_id = n.subscriber_id
       AND CAST(c.snapshot_date - INTERVAL 90 DAY AS DATE) >= n.change_date
),
resolved AS (
    SELECT
        subscriber_id,
        snapshot_date,
        signup_date,
        contract_type,
        payment_method,
        COALESCE(changed_plan, signup_plan) AS plan,
        COALESCE(changed_charge, signup_charge) AS monthly_charge,
        COALESCE(changed_charge_90, signup_charge) AS charge_90d_ago,
        COALESCE(cum_changes, 0) - COALESCE(cum_changes_90, 0) AS plan_changes_90d
    FROM counts_then
)
SELECT
    r.subscriber_id,
    timezone('UTC', CAST(r.snapshot_date + INTERVAL 1 DAY AS TIMESTAMP)) AS snapshot_ts,
    CAST(date_diff('day', r.signup_date, r.snapshot_date) AS INTEGER) AS tenure_days,
    r.plan,
    r.contract_type,
    r.payment_method,
    CAST(r.monthly_charge AS FLOAT) AS monthly_charge,
    CAST(r.monthly_charge / pc.list_price AS FLOAT) AS charge_to_list_ratio,
    CAST(r.monthly_charge - r.charge_90d_ago AS FLOAT) AS charge_change_90d,
    CAST(r.plan_changes_90d AS INTEGER) AS plan_changes_90d,
    r.snapshot_date
FROM resolved AS r
LEFT JOIN plan_catalog AS pc USING (plan)
