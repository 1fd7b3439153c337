"""Offline sources: the daily feature tables that sql/features/*.sql write under $CHURN_HOME/features.

Each table is partitioned by snapshot date (``<table>/snapshot_date=YYYY-MM-DD/*.parquet``) so a
read touches only the days that its window and TTL can reach.
"""

from feast import FileSource
from feast.data_format import ParquetFormat

from tasks.core.settings import get_settings

_FEATURES = get_settings().features_dir


def _daily_table(name: str, description: str) -> FileSource:
    return FileSource(
        name=f"{name}_source",
        path=str(_FEATURES / name / "*" / "*.parquet"),
        file_format=ParquetFormat(),
        timestamp_field="snapshot_ts",
        description=description,
        owner="ml-platform@churn-ops",
        tags={
            "layer": "features",
            "partitioned_by": "snapshot_date",
            "built_by": f"sql/features/{name}.sql",
        },
    )


subscriber_profile_source = _daily_table(
    "subscriber_profile", "Daily plan, contract and charges per subscriber in service."
)
subscriber_usage_30d_source = _daily_table(
    "subscriber_usage_30d",
    "Daily rolling 7/30-day data, voice and dropped-call totals per subscriber.",
)
subscriber_support_30d_source = _daily_table(
    "subscriber_support_30d", "Daily rolling 7/30-day support ticket counts per subscriber."
)
subscriber_billing_90d_source = _daily_table(
    "subscriber_billing_90d", "Daily rolling 90-day bill and late-payment counts per subscriber."
)
