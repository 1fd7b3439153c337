-- Grain: one row per prediction: (score_date, model_name, model_version, role, subscriber_id).
-- Keys: prediction_id (unique in the log).
-- Inputs: every published file of the prediction log, getvariable('prediction_files') (the glob
-- $CHURN_HOME/predictions/score_date=*/*.parquet, set by tasks/audit.py: a view cannot take
-- prepared parameters, so values reach the views as session variables).
-- score_date is a column of every file, so the score_date= directories are not read as a
-- hive partition; union_by_name keeps older files readable if the schema ever gains a column.
SELECT
    prediction_id,
    score_date,
    scored_at,
    subscriber_id,
    model_name,
    model_version,
    role,
    probability,
    risk_tier,
    reasons,
    features,
    feature_service,
    flow_run_id
FROM read_parquet(
    getvariable('prediction_files'), hive_partitioning = false, union_by_name = true
)
