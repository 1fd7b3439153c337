"""Feature services: the versioned lists of model inputs.

The service named by ``CHURN_FEATURE_SERVICE`` (default ``churn_model_v2``) is the one list used
by training, nightly scoring and online scoring alike. A change of inputs is a new service, never
an edit of an existing one: ``churn_model_v1`` stays as it was, so its models can still be scored.
"""

from feast import FeatureService
from features import (
    subscriber_billing_90d,
    subscriber_profile,
    subscriber_support_30d,
    subscriber_usage_30d,
    subscriber_usage_90d,
)

churn_model_v1 = FeatureService(
    name="churn_model_v1",
    features=[
        subscriber_profile,
        subscriber_usage_30d,
        subscriber_support_30d,
        subscriber_billing_90d,
    ],
    description="Inputs of the telecom churn model, version 1 (20 features; protected attributes excluded).",
    owner="ml-platform@churn-ops",
    tags={"model": "telecom_churn_model", "version": "1"},
)

churn_model_v2 = FeatureService(
    name="churn_model_v2",
    features=[
        subscriber_profile,
        subscriber_usage_30d,
        subscriber_support_30d,
        subscriber_billing_90d,
        subscriber_usage_90d,
    ],
    description=(
        "Inputs of the telecom churn model, version 2: version 1 plus usage relative to the "
        "subscriber's own baseline (31 features; protected attributes excluded)."
    ),
    owner="ml-platform@churn-ops",
    tags={"model": "telecom_churn_model", "version": "2"},
)
