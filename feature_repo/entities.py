"""Feast entities of churn-ops."""

from feast import Entity, ValueType

subscriber = Entity(
    name="subscriber",
    join_keys=["subscriber_id"],
    value_type=ValueType.INT64,
    description="A telecom subscriber (one contract line), identified by subscriber_id.",
    owner="ml-platform@churn-ops",
    tags={"domain": "retention"},
)
