-- Grain: one row per recorded alias move of a registered model (tasks/training/registry.py Promotion).
-- Keys: (model, alias, at).
-- Inputs: the promotion history JSONL, getvariable('promotion_history') ($CHURN_HOME/mlflow/promotions.jsonl).
-- Columns are declared, not sniffed, so an empty history still has them; to_version is null
-- when the alias was taken off.
SELECT
    "at",
    model,
    alias,
    from_version,
    to_version,
    "by",
    reason,
    run_id,
    action
FROM read_json(
    getvariable('promotion_history'),
    format = 'newline_delimited',
    columns = {
        'at': 'TIMESTAMPTZ',
        'model': 'VARCHAR',
        'alias': 'VARCHAR',
        'from_version': 'INTEGER',
        'to_version': 'INTEGER',
        'by': 'VARCHAR',
        'reason': 'VARCHAR',
        'run_id': 'VARCHAR',
        'action': 'VARCHAR'
    }
)
