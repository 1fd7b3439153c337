-- Grain: one row per customer key an import numbered (the customer's own id, e.g. 7590-VHVEG).
-- Keys: customer_key (unique); subscriber_id (unique), the number predictions carry.
-- Inputs: the source table customer_keys, getvariable('customer_keys_file')
-- ($CHURN_HOME/source/customer_keys.parquet, tasks/data/customer_keys.py). Join predictions
-- USING (subscriber_id) to see them by the customer's own id. A source imported with numeric
-- ids, or simulated, has no such table: the view is then empty.
SELECT
    customer_key,
    subscriber_id
FROM read_parquet(getvariable('customer_keys_file'))
