-- Grain: one row per prediction. Nightly rows (role champion | shadow): one per (score_date,
-- model_name, model_version, role, subscriber_id). Online rows (role online, from `churn serve`):
-- one per request, so a subscriber may appear many times a day; score_date is the request's day
-- in the business time zone.
-- Keys: prediction_id (unique in the log).
-- Inputs: every published file of the prediction log, getvariable('prediction_files') (the glob
-- $CHURN_HOME/predictions/score_date=*/*.parquet, set by tasks/audit/views.py: a view cannot take
-- prepared parameters, so values reach the views as session variables). The glob takes the
-- nightly files ({model}-v{version}-{role}.parquet) and the online partition's flush files
-- ({model}-v{version}-online-{flush_id}.parquet) alike; writers' temp files never match it.
-- score_date is a column of every file, so the score_date= directories are not read as a
-- hive partition; union_by_name keeps older files readable if the schema ever gains a column.
-- features is a struct of the feature values the model saw, one field per model input of the
-- row's feature_service (query features.support_calls_30d; to_json(features) for one JSON
-- object). Files of different feature services have different structs: union_by_name unifies
-- them by field name, so the view's struct has every field of every service, null where the
-- row's service lacks it (a field two services type differently gets a type both fit, e.g.
-- BIGINT for INTEGER and BIGINT). A file of zero rows may have features of the null type (no struct known): it unifies with the rest.
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
